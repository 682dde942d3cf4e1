// Package config reads a pgcourier node's TOML configuration file: one file
// per node, with kebab-case keys.
//
// Load is the one call a command needs: it reads the file, fills in defaults,
// decodes it strictly (a key the schema does not know is an error naming the
// key and its line), and validates it, reporting every problem at once with
// its key path, such as
//
//	client.toml:12: route[0].url: want an http or https URL, got "ftp://x"
//
// Secrets never appear in the file: a route's token comes from a file or an
// environment variable (Route.Token), a database password may come from a
// file (Database.ConnString), and an upstream stores only the SHA-256 of each
// token it accepts. Nothing in this package prints a secret.
//
// Only cmd/ and integration/ import this package; the other packages take
// plain option structs that cmd fills from a Config.
package config

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pgcourier/pgcourier"
)

// Defaults for keys a file may leave out.
const (
	// DefaultPublication is the publication a capturing node reads.
	DefaultPublication = "pgcourier"
	// DefaultRetention is how long an acknowledged batch stays in the
	// outbox.
	DefaultRetention = 24 * time.Hour
	// DefaultMaxBodyBytes is the largest request body a listener accepts.
	DefaultMaxBodyBytes int64 = 64 << 20
	// DefaultConflict is the conflict policy of an applying node.
	DefaultConflict = ConflictLastWriterWins
	// DefaultLogLevel is the level below which log records are dropped.
	DefaultLogLevel = "info"
	// DefaultLogFormat is the format log records are written in.
	DefaultLogFormat = "text"
)

// Values of Apply.Conflict.
const (
	// ConflictLastWriterWins resolves a change from another source by commit
	// time, the later commit winning, and records the loser.
	ConflictLastWriterWins = "last-writer-wins"
	// ConflictReject records every change from another source as a conflict
	// for an operator to review.
	ConflictReject = "reject"
)

// Values of Route.Kind.
const (
	// RouteREST sends batches over HTTP to an upstream node's listener.
	RouteREST = "rest"
	// RoutePostgres applies batches directly into an upstream database.
	RoutePostgres = "postgres"
	// RouteFile writes batch files into a folder that is carried upstream.
	RouteFile = "file"
)

// Config is the configuration of one node, as read from its TOML file.
type Config struct {
	// Node is the node's unique, stable id; see pgcourier.CheckNodeID. It is
	// the source id of every change the node captures.
	Node string `toml:"node"`
	// Role is what the node does in the topology.
	Role pgcourier.Role `toml:"role"`
	// Database is the node's own Postgres database.
	Database Database `toml:"database"`
	// Capture selects the tables the node captures; nil when the file has no
	// [capture] section.
	Capture *Capture `toml:"capture"`
	// Routes are the ways upstream, tried in order.
	Routes []Route `toml:"route"`
	// Listen is where the node accepts batches from nodes below it; nil when
	// the file has no [listen] section.
	Listen *Listen `toml:"listen"`
	// Apply sets how incoming batches are applied.
	Apply Apply `toml:"apply"`
	// Log sets what the node logs and how.
	Log Log `toml:"log"`

	file  string         // file name, for messages
	lines map[string]int // key path, with array indexes → line in the file
}

// File returns the name of the file c was read from, as given to Load or
// Parse; it is "" for a Config built in code.
func (c *Config) File() string { return c.file }

// Database is the connection to the node's own Postgres database.
type Database struct {
	// URL is a postgres:// URL or a keyword/value connection string. It
	// should not hold a password; use PasswordFile instead.
	URL string `toml:"url"`
	// PasswordFile names a file holding the database password, if any.
	PasswordFile string `toml:"password-file"`
}

// Capture selects the tables a node captures from its own database.
type Capture struct {
	// Tables are "schema.table" patterns of the tables to capture; each part
	// may use the wildcards of path.Match, such as "public.*".
	Tables []string `toml:"tables"`
	// Exclude are patterns of tables not to capture, in the same syntax.
	Exclude []string `toml:"exclude"`
	// Publication is the name of the publication capture reads.
	Publication string `toml:"publication"`
	// Slot is the name of the logical replication slot capture reads;
	// pgcourier.SlotName(node) by default.
	Slot string `toml:"slot"`
	// Retention is how long a batch stays in the outbox after its final
	// destination confirmed it applied, as a Go duration such as "72h";
	// DefaultRetention when empty. See RetentionPeriod.
	Retention string `toml:"retention"`
}

// RetentionPeriod returns Retention as a duration, DefaultRetention when it
// is empty. Validate has checked it.
func (c *Capture) RetentionPeriod() time.Duration {
	d, err := time.ParseDuration(c.Retention)
	if c.Retention == "" || err != nil {
		return DefaultRetention
	}
	return d
}

// Route is one way upstream. Which fields apply depends on Kind.
type Route struct {
	// Kind is RouteREST, RoutePostgres or RouteFile.
	Kind string `toml:"kind"`
	// URL is the upstream listener's http or https URL for a rest route, and
	// the upstream database's postgres:// URL for a postgres route.
	URL string `toml:"url"`
	// TokenFile names a file holding a rest route's token.
	TokenFile string `toml:"token-file"`
	// TokenEnv names an environment variable holding a rest route's token.
	TokenEnv string `toml:"token-env"`
	// PasswordFile names a file holding a postgres route's database password.
	PasswordFile string `toml:"password-file"`
	// Dir is the folder a file route writes batch files into.
	Dir string `toml:"dir"`
}

// Listen is where a node accepts batches from the nodes below it.
type Listen struct {
	// Addr is the host:port the node listens on, such as "0.0.0.0:8470".
	Addr string `toml:"addr"`
	// TLSCert names the PEM certificate file to serve HTTPS with.
	TLSCert string `toml:"tls-cert"`
	// TLSKey names the PEM private key file of TLSCert.
	TLSKey string `toml:"tls-key"`
	// MaxBodyBytes is the largest request body accepted.
	MaxBodyBytes int64 `toml:"max-body-bytes"`
	// Sources are the nodes allowed to send batches, with their tokens'
	// hashes.
	Sources []ListenSource `toml:"source"`
}

// ListenSource is a node allowed to send batches to a listener.
type ListenSource struct {
	// Node is the id of the sending node.
	Node string `toml:"node"`
	// TokenSHA256 is the hex SHA-256 of the sending node's token, as printed
	// by "pgcourier token --node ID".
	TokenSHA256 string `toml:"token-sha256"`
}

// Apply sets how an applying node writes incoming batches.
type Apply struct {
	// Conflict is ConflictLastWriterWins or ConflictReject.
	Conflict string `toml:"conflict"`
}

// Log sets the node's logging.
type Log struct {
	// Level is "debug", "info", "warn" or "error".
	Level string `toml:"level"`
	// Format is "text" or "json".
	Format string `toml:"format"`
}

// Load reads the configuration file at path, decodes it with Parse and checks
// it with Validate. Errors name the file, the line and the key.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes a configuration file's contents; name is used in messages.
// It fills in defaults, then decodes strictly: a syntax error, a value of the
// wrong type or a key the schema does not know is an error. Each is a
// *Problem; when there are several, Parse returns them all, joined with
// errors.Join. Parse does not check the values; Validate does.
func Parse(data []byte, name string) (*Config, error) {
	text := string(data)
	var raw map[string]any
	if _, err := toml.Decode(text, &raw); err != nil {
		return nil, syntaxProblem(name, err)
	}
	lines := locateKeys(text)
	if probs := checkKeys(raw, name, lines); len(probs) > 0 {
		return nil, joinProblems(probs)
	}

	c := &Config{
		Capture: &Capture{Publication: DefaultPublication},
		Listen:  &Listen{MaxBodyBytes: DefaultMaxBodyBytes},
		Apply:   Apply{Conflict: DefaultConflict},
		Log:     Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
		file:    name,
		lines:   lines,
	}
	if _, err := toml.Decode(text, c); err != nil {
		// checkKeys has already vetted every key and type; this is a
		// safety net for anything it does not know about.
		return nil, syntaxProblem(name, err)
	}
	// The sections filled with defaults above stay nil when the file has
	// none, and the default slot follows from the node id.
	if capture, ok := raw["capture"].(map[string]any); !ok {
		c.Capture = nil
	} else if _, ok := capture["slot"]; !ok {
		c.Capture.Slot = pgcourier.SlotName(c.Node)
	}
	if _, ok := raw["listen"]; !ok {
		c.Listen = nil
	}
	return c, nil
}

// syntaxProblem turns a decoding error into a Problem with the line it
// occurred on.
func syntaxProblem(name string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Problem{File: name, Line: pe.Position.Line, Msg: "syntax error: " + sentence(pe.Message)}
	}
	return &Problem{File: name, Msg: sentence(err.Error())}
}
