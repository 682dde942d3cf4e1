package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcourier/pgcourier"
)

// Problem is one thing wrong with a configuration file: a syntax error, an
// unknown key, a value of the wrong type or a value Validate refuses.
type Problem struct {
	File string // file name as given to Parse or Load; may be empty
	Line int    // line of the key, or of its table; 0 if unknown
	Key  string // key path, such as "route[1].url"; empty for a syntax error
	Msg  string // what is wrong and, where useful, how to fix it
}

// Error returns the problem as "FILE:LINE: KEY: MSG", leaving out the parts
// that are unknown.
func (p *Problem) Error() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			b.WriteString(":" + strconv.Itoa(p.Line))
		}
		b.WriteString(": ")
	} else if p.Line > 0 {
		b.WriteString("line " + strconv.Itoa(p.Line) + ": ")
	}
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// joinProblems returns nil, the only problem, or all of them joined.
func joinProblems(probs []*Problem) error {
	switch len(probs) {
	case 0:
		return nil
	case 1:
		return probs[0]
	}
	errs := make([]error, len(probs))
	for i, p := range probs {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// sentence makes a library's message fit in a Problem: its first line,
// without a "toml: " prefix, a capital first letter or a final period.
func sentence(msg string) string {
	msg, _, _ = strings.Cut(msg, "\n")
	msg = strings.TrimPrefix(msg, "toml: ")
	msg = strings.TrimSuffix(strings.TrimSpace(msg), ".")
	if msg != "" && msg[0] >= 'A' && msg[0] <= 'Z' {
		msg = strings.ToLower(msg[:1]) + msg[1:]
	}
	return msg
}

// Validate checks the values of c and returns every problem it finds, each a
// *Problem naming the key and its line, joined with errors.Join; or nil if
// there are none. It neither connects to a database nor reads the token and
// password files the configuration names.
func (c *Config) Validate() error {
	v := validator{c: c}
	v.node()
	v.database()
	v.roleSections()
	if c.Capture != nil {
		v.capture()
	}
	for i, r := range c.Routes {
		v.route(i, r)
	}
	if c.Listen != nil {
		v.listen()
	}
	v.apply()
	v.log()
	// In the order of the file; problems without a line (a missing
	// section) come first.
	slices.SortStableFunc(v.probs, func(a, b *Problem) int { return a.Line - b.Line })
	return joinProblems(v.probs)
}

type validator struct {
	c     *Config
	probs []*Problem
}

// add records a problem with key. The line is the key's own, or that of the
// nearest table holding it.
func (v *validator) add(key, format string, args ...any) {
	v.probs = append(v.probs, &Problem{
		File: v.c.file,
		Line: lineOf(v.c.lines, key),
		Key:  key,
		Msg:  fmt.Sprintf(format, args...),
	})
}

var roleNames = joinQuoted(pgcourier.Roles)

func (v *validator) node() {
	c := v.c
	if c.Node == "" {
		v.add("node", `required: the node's unique, stable id, such as "laptop-07"`)
	} else if err := pgcourier.CheckNodeID(c.Node); err != nil {
		v.add("node", "%s", err)
	}
	switch {
	case c.Role == "":
		v.add("role", "required: one of %s", roleNames)
	case !c.Role.Valid():
		v.add("role", "want one of %s, got %q", roleNames, c.Role)
	}
}

func (v *validator) database() {
	d := v.c.Database
	if d.URL == "" {
		v.add("database.url", "required: the node's own database, such as postgres://pgcourier@127.0.0.1:5432/edc")
		return
	}
	if msg := checkConnString(d.URL); msg != "" {
		v.add("database.url", "%s", msg)
	}
}

// checkConnString returns what is wrong with a connection string, or "". The
// message never quotes the string, which may hold a password.
func checkConnString(s string) string {
	if _, err := pgx.ParseConfig(s); err != nil {
		return "not a valid connection string" + detail(errors.Unwrap(err)) + "; want a URL such as postgres://USER@HOST:5432/DBNAME"
	}
	return ""
}

// detail returns " (MSG)" for an error from parsing a value that may hold a
// password, or "" if there is no error or its message quotes part of the
// value.
func detail(err error) string {
	if err == nil {
		return ""
	}
	msg := sentence(err.Error())
	if msg == "" || strings.ContainsAny(msg, "\"'`") {
		return ""
	}
	return " (" + msg + ")"
}

// roleSections checks which sections the node's role needs or forbids.
func (v *validator) roleSections() {
	c := v.c
	switch c.Role {
	case pgcourier.RoleClient:
		if c.Capture == nil {
			v.add("capture", "required for a client: add a [capture] section listing the tables to send upstream")
		}
		if len(c.Routes) == 0 {
			v.add("route", "a client needs at least one [[route]] to send its batches upstream")
		}
		if c.Listen != nil {
			v.add("listen", "a client accepts no batches: remove [listen], or set role = \"middleman\" or \"server\"")
		}
	case pgcourier.RoleMiddleman:
		if c.Listen == nil {
			v.add("listen", "required for a middleman: add a [listen] section with the addr clients send to")
		}
		if len(c.Routes) == 0 {
			v.add("route", "a middleman needs at least one [[route]] to relay batches upstream")
		}
		if c.Capture != nil {
			v.add("capture", "a middleman relays batches and captures nothing of its own: remove [capture]")
		}
	case pgcourier.RoleServer:
		if c.Listen == nil {
			v.add("listen", "required for a server: add a [listen] section with the addr nodes below send to")
		}
	case pgcourier.RoleCentral:
		if c.Listen == nil {
			v.add("listen", "required for central: add a [listen] section with the addr servers send to")
		}
		if len(c.Routes) > 0 {
			v.add("route[0]", "central forwards nothing: remove every [[route]]")
		}
		if c.Capture != nil {
			v.add("capture", "central captures nothing: remove [capture]")
		}
	}
}

func (v *validator) capture() {
	cp := v.c.Capture
	if len(cp.Tables) == 0 {
		v.add("capture.tables", `required: the tables to capture, such as ["public.*"]`)
	}
	for i, p := range cp.Tables {
		key := fmt.Sprintf("capture.tables[%d]", i)
		if err := pgcourier.CheckTablePattern(p); err != nil {
			v.add(key, "%s", sentence(err.Error()))
			continue
		}
		if schema, _, _ := strings.Cut(p, "."); schema == "pgcourier" {
			v.add(key, "the pgcourier schema holds pgcourier's own state and is never captured: remove %q", p)
		}
	}
	for i, p := range cp.Exclude {
		if err := pgcourier.CheckTablePattern(p); err != nil {
			v.add(fmt.Sprintf("capture.exclude[%d]", i), "%s", sentence(err.Error()))
		}
	}
	if msg := checkIdentifier(cp.Publication); msg != "" {
		v.add("capture.publication", "%s", msg)
	}
	// A slot derived from an invalid node id is reported as the node's
	// problem, not a second time here.
	if pgcourier.CheckNodeID(v.c.Node) == nil || cp.Slot != pgcourier.SlotName(v.c.Node) {
		if msg := checkIdentifier(cp.Slot); msg != "" {
			v.add("capture.slot", "%s", msg)
		}
	}
	if cp.Retention != "" {
		if d, err := time.ParseDuration(cp.Retention); err != nil || d < 0 {
			v.add("capture.retention", `want a duration such as "24h" or "168h", got %q`, cp.Retention)
		} else if d < time.Minute {
			v.add("capture.retention", `want at least "1m", got %q: acknowledged batches are kept at least a minute`, cp.Retention)
		}
	}
}

// checkIdentifier returns what is wrong with a publication or slot name, or
// "". Replication slot names allow only lowercase letters, digits and '_';
// publications follow the same rule so that they never need quoting.
func checkIdentifier(name string) string {
	const want = "want 1 to 63 lowercase letters, digits and '_'"
	if name == "" || len(name) > 63 {
		return fmt.Sprintf("%s, got %d characters", want, len(name))
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Sprintf("%s, got %q", want, name)
		}
	}
	return ""
}

var routeKinds = joinQuoted([]string{RouteREST, RoutePostgres, RouteFile})

// routeKeys lists the keys, besides kind, that each kind of route uses.
var routeKeys = map[string][]string{
	RouteREST:     {"url", "token-file", "token-env"},
	RoutePostgres: {"url", "password-file"},
	RouteFile:     {"dir"},
}

func (v *validator) route(i int, r Route) {
	key := fmt.Sprintf("route[%d]", i)
	switch r.Kind {
	case "":
		v.add(key+".kind", "required: one of %s", routeKinds)
		return
	case RouteREST:
		v.restURL(key+".url", r.URL)
		switch {
		case r.TokenFile == "" && r.TokenEnv == "":
			v.add(key, `a rest route needs a token: set token-file to a file holding it, or token-env to a variable holding it; "pgcourier token --node %s" makes one`, orID(v.c.Node))
		case r.TokenFile != "" && r.TokenEnv != "":
			v.add(key+".token-env", "set token-file or token-env, not both")
		case r.TokenEnv != "" && !isEnvName(r.TokenEnv):
			// Never quote the value: it may be the token itself.
			v.add(key+".token-env", "want the name of an environment variable (letters, digits and '_'), such as PGCOURIER_TOKEN, not the token itself")
		}
	case RoutePostgres:
		v.postgresURL(key+".url", r.URL)
	case RouteFile:
		if r.Dir == "" {
			v.add(key+".dir", "required: the folder batch files are written to, such as /media/usb/pgcourier")
		}
	default:
		v.add(key+".kind", "want one of %s, got %q", routeKinds, r.Kind)
		return
	}
	for _, f := range []struct{ key, val string }{
		{"url", r.URL}, {"token-file", r.TokenFile}, {"token-env", r.TokenEnv},
		{"password-file", r.PasswordFile}, {"dir", r.Dir},
	} {
		if f.val != "" && !slices.Contains(routeKeys[r.Kind], f.key) {
			v.add(key+"."+f.key, "a %s route does not use %s: remove it", r.Kind, f.key)
		}
	}
}

// orID returns node if it is a valid id, and "ID" otherwise, for a hint.
func orID(node string) string {
	if pgcourier.CheckNodeID(node) == nil {
		return node
	}
	return "ID"
}

func (v *validator) restURL(key, s string) {
	if s == "" {
		v.add(key, "required: the upstream's address, such as http://community.local:8470")
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.add(key, "want an http or https URL, got %s", quoteURL(s, u, err))
	}
}

func (v *validator) postgresURL(key, s string) {
	if s == "" {
		v.add(key, "required: the upstream database, such as postgres://pgcourier@community.local:5432/edc")
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		v.add(key, "want a postgres:// or postgresql:// URL, got %s", quoteURL(s, u, err))
		return
	}
	if msg := checkConnString(s); msg != "" {
		v.add(key, "%s", msg)
	}
}

// quoteURL quotes a URL for a message with any password masked. A URL that
// does not parse is not quoted at all: it might hold a password.
func quoteURL(s string, u *url.URL, err error) string {
	if err != nil {
		return "a URL that does not parse" + detail(errors.Unwrap(err))
	}
	return strconv.Quote(u.Redacted())
}

func isEnvName(s string) bool {
	for i, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= '0' && c <= '9' && i > 0) {
			return false
		}
	}
	return s != ""
}

func (v *validator) listen() {
	l := v.c.Listen
	if l.Addr == "" {
		v.add("listen.addr", `required: the host:port to listen on, such as "0.0.0.0:8470"`)
	} else if _, port, err := net.SplitHostPort(l.Addr); err != nil {
		v.add("listen.addr", `want host:port, such as "0.0.0.0:8470", got %q`, l.Addr)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		v.add("listen.addr", "want a port number from 0 to 65535, got %q", port)
	}
	switch {
	case l.TLSCert != "" && l.TLSKey == "":
		v.add("listen.tls-key", "required when tls-cert is set: the certificate's private key file")
	case l.TLSCert == "" && l.TLSKey != "":
		v.add("listen.tls-cert", "required when tls-key is set: the certificate file")
	}
	if l.MaxBodyBytes <= 0 {
		v.add("listen.max-body-bytes", "want a number of bytes above 0, got %d; the default is %d (64 MiB)", l.MaxBodyBytes, DefaultMaxBodyBytes)
	}
	seen := map[string]int{}
	for i, s := range l.Sources {
		key := fmt.Sprintf("listen.source[%d]", i)
		switch {
		case s.Node == "":
			v.add(key+".node", "required: the id of the node allowed to send, such as \"laptop-07\"")
		case pgcourier.CheckNodeID(s.Node) != nil:
			v.add(key+".node", "%s", pgcourier.CheckNodeID(s.Node))
		case s.Node == v.c.Node:
			v.add(key+".node", "%q is this node's own id, and a node never accepts its own batches: remove this source", s.Node)
		default:
			if j, ok := seen[s.Node]; ok {
				v.add(key+".node", "%q is already listed as listen.source[%d]: list each node once", s.Node, j)
			} else {
				seen[s.Node] = i
			}
		}
		if !isTokenHash(s.TokenSHA256) {
			// Never quote the value: someone may have pasted the token.
			v.add(key+".token-sha256", `want 64 lowercase hex characters: "pgcourier token --node %s" prints it`, orID(s.Node))
		}
	}
}

func isTokenHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (v *validator) apply() {
	switch v.c.Apply.Conflict {
	case ConflictLastWriterWins, ConflictReject:
	default:
		v.add("apply.conflict", "want %q or %q, got %q", ConflictLastWriterWins, ConflictReject, v.c.Apply.Conflict)
	}
}

func (v *validator) log() {
	switch v.c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", `want "debug", "info", "warn" or "error", got %q`, v.c.Log.Level)
	}
	switch v.c.Log.Format {
	case "text", "json":
	default:
		v.add("log.format", `want "text" or "json", got %q`, v.c.Log.Format)
	}
}

// joinQuoted lists values as `"a", "b" or "c"`.
func joinQuoted[S ~string](values []S) string {
	var b strings.Builder
	for i, s := range values {
		switch {
		case i == 0:
		case i == len(values)-1:
			b.WriteString(" or ")
		default:
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(string(s)))
	}
	return b.String()
}
