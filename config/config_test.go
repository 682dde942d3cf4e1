package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pgcourier/pgcourier"
)

// problemStrings returns the messages of the problems err joins.
func problemStrings(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var msgs []string
	for _, e := range errs {
		var p *Problem
		if !errors.As(e, &p) {
			t.Errorf("error %q is a %T, want a *Problem", e, e)
		}
		msgs = append(msgs, e.Error())
	}
	return msgs
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "syntax error",
			in:   "node = \"laptop-07\"\nrole = \n",
			want: []string{`t.toml:2: syntax error: expected value but found '\n' instead`},
		},
		{
			name: "unquoted string",
			in:   "node = laptop-07\n",
			want: []string{`t.toml:1: syntax error: expected value but found "laptop" instead`},
		},
		{
			name: "duplicate key",
			in:   "node = \"a\"\nrole = \"client\"\nnode = \"b\"\n",
			want: []string{`t.toml:3: syntax error: key 'node' has already been defined`},
		},
		{
			name: "number for a string",
			in:   "role = \"client\"\nnode = 7\n",
			want: []string{`t.toml:2: node: want a string, got a whole number; put the value in quotes`},
		},
		{
			name: "every type error",
			in: "node = true\n" +
				"[capture]\n" +
				"tables = \"public.*\"\n" +
				"exclude = [\"public.a\", 7]\n" +
				"[listen]\n" +
				"max-body-bytes = \"64MiB\"\n" +
				"addr = 8470\n",
			want: []string{
				`t.toml:1: node: want a string, got a boolean; put the value in quotes`,
				`t.toml:3: capture.tables: want an array of strings, got a string; put it in brackets, such as ["a", "b"]`,
				`t.toml:4: capture.exclude[1]: want a string, got a whole number; put the value in quotes`,
				`t.toml:6: listen.max-body-bytes: want a whole number, got a string; remove the quotes`,
				`t.toml:7: listen.addr: want a string, got a whole number; put the value in quotes`,
			},
		},
		{
			name: "value for a section",
			in:   "capture = \"public.*\"\nroute = \"rest\"\n",
			want: []string{
				`t.toml:1: capture: want a [capture] section, got a string`,
				`t.toml:2: route: want [[route]] sections, got a string`,
			},
		},
		{
			name: "unknown top-level key",
			in:   "node = \"laptop-07\"\nnodes = \"laptop-08\"\n",
			want: []string{`t.toml:2: nodes: unknown key (did you mean node?)`},
		},
		{
			name: "unknown key with no near match",
			in:   "colour = \"blue\"\n",
			want: []string{`t.toml:1: colour: unknown key; the keys at the top level are node, role, database, capture, route, listen, apply, log`},
		},
		{
			name: "unknown key in an array of tables",
			in:   "[[route]]\nkind = \"rest\"\ncertificate = \"x\"\n",
			want: []string{`t.toml:3: route[0].certificate: unknown key; the keys in [[route]] are kind, url, token-file, token-env, password-file, dir`},
		},
		{
			name: "unknown table",
			in:   "[captur]\ntables = [\"public.*\"]\n",
			want: []string{`t.toml:1: captur: unknown key (did you mean capture?)`},
		},
		{
			name: "unknown nested key",
			in:   "[database]\nurl = \"postgres://h/db\"\nurll = \"x\"\n",
			want: []string{`t.toml:3: database.urll: unknown key (did you mean url?)`},
		},
		{
			name: "unknown key in the second route",
			in: `node = "laptop-07"
role = "client"

[database]
url = "postgres://pgcourier@127.0.0.1:5432/edc"

[[route]]
kind = "rest"
url = "http://community.local:8470"
token-file = "/etc/pgcourier/token"

[[route]]
kind = "rest"
token_file = "/etc/pgcourier/token"
`,
			want: []string{`t.toml:14: route[1].token_file: unknown key (did you mean token-file?)`},
		},
		{
			name: "unknown key in a listen source",
			in: "[listen]\naddr = \":8470\"\n" +
				"[[listen.source]]\nnode = \"laptop-07\"\n" +
				"[[listen.source]]\nnode = \"laptop-08\"\ntoken_sha256 = \"ab\"\n",
			want: []string{`t.toml:7: listen.source[1].token_sha256: unknown key (did you mean token-sha256?)`},
		},
		{
			name: "several unknown keys",
			in: "Node = \"laptop-07\"\n" +
				"[database]\nURL = \"postgres://h/db\"\n" +
				"[[route]]\nkind = \"rest\"\ntokenfile = \"t\"\n" +
				"[log]\nlevl = \"debug\"\nformat = \"json\"\n",
			want: []string{
				`t.toml:1: Node: unknown key (did you mean node?)`,
				`t.toml:3: database.URL: unknown key (did you mean url?)`,
				`t.toml:6: route[0].tokenfile: unknown key (did you mean token-file?)`,
				`t.toml:8: log.levl: unknown key (did you mean level?)`,
			},
		},
		{
			name: "snake case",
			in:   "[listen]\nmax_body_bytes = 10\ntls_cert = \"c\"\n",
			want: []string{
				`t.toml:2: listen.max_body_bytes: unknown key (did you mean max-body-bytes?)`,
				`t.toml:3: listen.tls_cert: unknown key (did you mean tls-cert?)`,
			},
		},
		{
			name: "inline token is refused without echoing it",
			in:   "[[route]]\nkind = \"rest\"\ntoken = \"s3cret-token\"\n",
			want: []string{`t.toml:3: route[0].token: unknown key: a secret never goes in the config; name a file with token-file or a variable with token-env`},
		},
		{
			name: "inline password",
			in:   "[database]\npassword = \"s3cret\"\n",
			want: []string{`t.toml:2: database.password: unknown key: a password never goes in the config; put it in a file and name it with password-file`},
		},
		{
			name: "inline tables are located at their key",
			in:   "database = { url = \"postgres://h/db\", pasword = \"x\" }\n\nroute = [\n  { kind = \"file\", dir = \"/d\" },\n  { knd = \"rest\" },\n]\n",
			want: []string{
				`t.toml:1: database.pasword: unknown key; the keys in [database] are url, password-file`,
				`t.toml:3: route[1].knd: unknown key (did you mean kind?)`,
			},
		},
		{
			name: "dotted and quoted keys",
			in:   "database.url = \"postgres://h/db\"\n\"database\".\"passwd-file\" = \"f\"\n",
			want: []string{`t.toml:2: database.passwd-file: unknown key (did you mean password-file?)`},
		},
		{
			name: "multi-line strings do not shift lines",
			in:   "[database]\nurl = \"\"\"\npostgres://h/db\nx = 1\n\"\"\"\npasword-file = 'p'\n",
			want: []string{`t.toml:6: database.pasword-file: unknown key (did you mean password-file?)`},
		},
		{
			name: "type errors and unknown keys together",
			in:   "node = 1\nrolle = \"client\"\n",
			want: []string{
				`t.toml:1: node: want a string, got a whole number; put the value in quotes`,
				`t.toml:2: rolle: unknown key (did you mean role?)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in), "t.toml")
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, nil; want errors %q", tt.in, c, tt.want)
			}
			if c != nil {
				t.Errorf("Parse(%q) returned a config with error %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, problemStrings(t, err)); diff != "" {
				t.Errorf("Parse(%q) errors (-want +got):\n%s", tt.in, diff)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("Parse(%q) error = %v, want no secret in it", tt.in, err)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Config
	}{
		{
			name: "client",
			in: `node = "laptop-07"
role = "client"
[database]
url = "postgres://pgcourier@127.0.0.1:5432/edc"
[capture]
tables = ["public.*"]
[[route]]
kind = "file"
dir = "/media/usb"
`,
			want: &Config{
				Node:     "laptop-07",
				Role:     pgcourier.RoleClient,
				Database: Database{URL: "postgres://pgcourier@127.0.0.1:5432/edc"},
				Capture:  &Capture{Tables: []string{"public.*"}, Publication: "pgcourier", Slot: "pgcourier_laptop_07"},
				Routes:   []Route{{Kind: "file", Dir: "/media/usb"}},
				Apply:    Apply{Conflict: "last-writer-wins"},
				Log:      Log{Level: "info", Format: "text"},
			},
		},
		{
			name: "central",
			in: `node = "central"
role = "central"
[database]
url = "postgres://pgcourier@127.0.0.1:5432/edc"
[listen]
addr = ":8470"
`,
			want: &Config{
				Node:     "central",
				Role:     pgcourier.RoleCentral,
				Database: Database{URL: "postgres://pgcourier@127.0.0.1:5432/edc"},
				Listen:   &Listen{Addr: ":8470", MaxBodyBytes: 64 << 20},
				Apply:    Apply{Conflict: "last-writer-wins"},
				Log:      Log{Level: "info", Format: "text"},
			},
		},
		{
			name: "explicit values win",
			in: `node = "site-1"
role = "server"
[capture]
tables = ["public.*"]
publication = "site_pub"
slot = "site_slot"
[listen]
addr = ":8470"
max-body-bytes = 1024
[apply]
conflict = "reject"
[log]
level = "debug"
format = "json"
`,
			want: &Config{
				Node:    "site-1",
				Role:    pgcourier.RoleServer,
				Capture: &Capture{Tables: []string{"public.*"}, Publication: "site_pub", Slot: "site_slot"},
				Listen:  &Listen{Addr: ":8470", MaxBodyBytes: 1024},
				Apply:   Apply{Conflict: "reject"},
				Log:     Log{Level: "debug", Format: "json"},
			},
		},
		{
			name: "empty file",
			in:   "",
			want: &Config{
				Apply: Apply{Conflict: "last-writer-wins"},
				Log:   Log{Level: "info", Format: "text"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in), "t.toml")
			if err != nil {
				t.Fatalf("Parse(%q) error = %v, want nil", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreUnexported(Config{})); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "client.toml")
	writeFile(t, good, `node = "laptop-07"
role = "client"
[database]
url = "postgres://pgcourier@127.0.0.1:5432/edc"
[capture]
tables = ["public.*"]
[[route]]
kind = "rest"
url = "http://community.local:8470"
token-env = "PGCOURIER_TOKEN"
`)
	c, err := Load(good)
	if err != nil {
		t.Fatalf("Load(%q) error = %v, want nil", good, err)
	}
	if c.Node != "laptop-07" || c.File() != good {
		t.Errorf("Load(%q) = node %q from %q, want node %q from %q", good, c.Node, c.File(), "laptop-07", good)
	}

	bad := filepath.Join(dir, "bad.toml")
	writeFile(t, bad, "node = \"laptop-07\"\nrole = \"hub\"\n")
	_, err = Load(bad)
	if err == nil || !strings.Contains(err.Error(), bad+":2: role: want one of") {
		t.Errorf("Load(%q) error = %v, want a problem at %s:2 naming role", bad, err, bad)
	}

	missing := filepath.Join(dir, "missing.toml")
	if _, err := Load(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(%q) error = %v, want one wrapping os.ErrNotExist", missing, err)
	}
}

func TestLoadDeploySamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "deploy", "*.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("found %d sample configs in deploy/, want one per role (4)", len(files))
	}
	roles := map[pgcourier.Role]bool{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load(%q) error = %v, want nil", f, err)
			}
			roles[c.Role] = true
			if want := strings.TrimSuffix(filepath.Base(f), ".toml"); string(c.Role) != want {
				t.Errorf("Load(%q).Role = %q, want %q, as the file name says", f, c.Role, want)
			}
		})
	}
	for _, r := range pgcourier.Roles {
		if !roles[r] {
			t.Errorf("no sample config in deploy/ has role %q", r)
		}
	}
}

func TestProblemError(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "client.toml", Line: 12, Key: "route[0].url", Msg: `want an http or https URL, got "ftp://x"`}, `client.toml:12: route[0].url: want an http or https URL, got "ftp://x"`},
		{Problem{File: "client.toml", Key: "capture", Msg: "required"}, "client.toml: capture: required"},
		{Problem{File: "client.toml", Line: 3, Msg: "syntax error: x"}, "client.toml:3: syntax error: x"},
		{Problem{Line: 3, Key: "node", Msg: "required"}, "line 3: node: required"},
		{Problem{Key: "node", Msg: "required"}, "node: required"},
	}
	for _, tt := range tests {
		if got := tt.p.Error(); got != tt.want {
			t.Errorf("%+v.Error() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
