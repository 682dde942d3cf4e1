package pgcourier

import (
	"fmt"
	"strings"
)

// Role is what a node does in the topology. Data only ever flows upstream:
// client → (middleman →) server → central.
type Role string

// The roles a node can have.
const (
	// RoleClient captures its own database and ships what it captured.
	RoleClient Role = "client"
	// RoleMiddleman accepts batches from clients, applies them to its own
	// database for inspection, and relays the original batches upstream.
	RoleMiddleman Role = "middleman"
	// RoleServer applies what arrives, forwards it to central, and may capture
	// edits made on the server itself.
	RoleServer Role = "server"
	// RoleCentral applies everything; it forwards nothing.
	RoleCentral Role = "central"
)

// Roles lists every valid role in topology order, field first.
var Roles = []Role{RoleClient, RoleMiddleman, RoleServer, RoleCentral}

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool {
	switch r {
	case RoleClient, RoleMiddleman, RoleServer, RoleCentral:
		return true
	}
	return false
}

// Listens reports whether a node of this role accepts batches from nodes
// below it.
func (r Role) Listens() bool {
	return r == RoleMiddleman || r == RoleServer || r == RoleCentral
}

// Applies reports whether a node of this role applies incoming batches to its
// own database, and so needs commit timestamps and replication origins there.
func (r Role) Applies() bool { return r.Listens() }

// MayCapture reports whether a node of this role may capture changes made in
// its own database. A client always does; a server does for edits made on the
// server itself.
func (r Role) MayCapture() bool { return r == RoleClient || r == RoleServer }

// MaxNodeIDLen is the longest node id accepted. It keeps names derived from
// the id (the replication slot, the replication origin) within Postgres's
// 63-byte identifier limit.
const MaxNodeIDLen = 40

// CheckNodeID returns an error if id cannot name a node. A node id is 1 to
// MaxNodeIDLen characters of lowercase letters, digits, '-', '_' and '.',
// starting with a letter or digit, such as "laptop-07".
func CheckNodeID(id string) error {
	if id == "" {
		return fmt.Errorf("node id is empty")
	}
	if len(id) > MaxNodeIDLen {
		return fmt.Errorf("node id %q is longer than %d characters", id, MaxNodeIDLen)
	}
	for i, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return fmt.Errorf("node id %q: use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit", id)
		}
	}
	return nil
}

// SlotName returns the default logical replication slot name for a capturing
// node: "pgcourier_" followed by the node id with '-' and '.' turned into '_'
// (slot names allow only lowercase letters, digits and underscores).
func SlotName(node string) string {
	return "pgcourier_" + strings.NewReplacer("-", "_", ".", "_").Replace(node)
}

// OriginName returns the name of the replication origin that records, on an
// upstream database, which row versions the given source wrote.
func OriginName(source string) string { return "pgcourier:" + source }
