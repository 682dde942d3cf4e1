package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

// clientBase is a valid client config; the cases below change it line by
// line, so its line numbers matter.
const clientBase = `node = "laptop-07"
role = "client"
[database]
url = "postgres://pgcourier@127.0.0.1:5432/edc"
[capture]
tables = ["public.*"]
[[route]]
kind = "rest"
url = "http://community.local:8470"
token-file = "/etc/pgcourier/token"
`

// centralBase is a valid central config.
const centralBase = `node = "central"
role = "central"
[database]
url = "postgres://pgcourier@127.0.0.1:5432/edc"
[listen]
addr = "0.0.0.0:8470"
`

const hash = "e343fc582992be1bc898b6dd12c18020eb33c49596c9402c67094b8c1856c1f1"

// replaceLine returns doc with line n (from 1) replaced by text, which may
// hold several lines or none.
func replaceLine(doc string, n int, text string) string {
	lines := strings.Split(doc, "\n")
	lines[n-1] = text
	return strings.Join(lines, "\n")
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{name: "valid client", in: clientBase},
		{name: "valid central", in: centralBase},
		{
			name: "valid middleman",
			in: `node = "driver-01"
role = "middleman"
[database]
url = "host=/var/run/postgresql dbname=edc"
[listen]
addr = "[::]:8470"
tls-cert = "/etc/pgcourier/cert.pem"
tls-key = "/etc/pgcourier/key.pem"
[[listen.source]]
node = "laptop-07"
token-sha256 = "` + hash + `"
[[route]]
kind = "rest"
url = "https://community.local"
token-env = "PGCOURIER_TOKEN"
[[route]]
kind = "file"
dir = "/media/usb"
`,
		},
		{
			name: "valid server without routes",
			in: `node = "site-1"
role = "server"
[database]
url = "postgresql://pgcourier@127.0.0.1/edc"
[capture]
tables = ["public.*", "lab.specimen_?"]
exclude = ["public.django_*"]
[listen]
addr = ":8470"
`,
		},
		{
			name: "node missing",
			in:   replaceLine(clientBase, 1, ""),
			want: []string{`t.toml: node: required: the node's unique, stable id, such as "laptop-07"`},
		},
		{
			name: "node invalid",
			in:   replaceLine(clientBase, 1, `node = "Laptop 07"`),
			want: []string{`t.toml:1: node: node id "Laptop 07": use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit`},
		},
		{
			name: "role missing",
			in:   replaceLine(clientBase, 2, ""),
			want: []string{`t.toml: role: required: one of "client", "middleman", "server" or "central"`},
		},
		{
			name: "role invalid",
			in:   replaceLine(clientBase, 2, `role = "hub"`),
			want: []string{`t.toml:2: role: want one of "client", "middleman", "server" or "central", got "hub"`},
		},
		{
			name: "database url missing",
			in:   replaceLine(clientBase, 4, ""),
			want: []string{`t.toml:3: database.url: required: the node's own database, such as postgres://pgcourier@127.0.0.1:5432/edc`},
		},
		{
			name: "database section missing",
			in:   replaceLine(replaceLine(clientBase, 4, ""), 3, ""),
			want: []string{`t.toml: database.url: required: the node's own database, such as postgres://pgcourier@127.0.0.1:5432/edc`},
		},
		{
			name: "database url unparseable, password not echoed",
			in:   replaceLine(clientBase, 4, `url = "postgres://u:s3cret@h:x/db"`),
			want: []string{`t.toml:4: database.url: not a valid connection string; want a URL such as postgres://USER@HOST:5432/DBNAME`},
		},
		{
			name: "database url with a safe detail",
			in:   replaceLine(clientBase, 4, `url = "postgres://h/db?sslmode=sometimes"`),
			want: []string{`t.toml:4: database.url: not a valid connection string (sslmode is invalid); want a URL such as postgres://USER@HOST:5432/DBNAME`},
		},
		{
			name: "client without capture or route, with listen",
			in:   clientBase[:strings.Index(clientBase, "[capture]")] + "[listen]\naddr = \":8470\"\n",
			want: []string{
				`t.toml: capture: required for a client: add a [capture] section listing the tables to send upstream`,
				`t.toml: route: a client needs at least one [[route]] to send its batches upstream`,
				`t.toml:5: listen: a client accepts no batches: remove [listen], or set role = "middleman" or "server"`,
			},
		},
		{
			name: "middleman without listen or route, with capture",
			in:   replaceLine(clientBase[:strings.Index(clientBase, "[[route]]")], 2, `role = "middleman"`),
			want: []string{
				`t.toml: listen: required for a middleman: add a [listen] section with the addr clients send to`,
				`t.toml: route: a middleman needs at least one [[route]] to relay batches upstream`,
				`t.toml:5: capture: a middleman relays batches and captures nothing of its own: remove [capture]`,
			},
		},
		{
			name: "server without listen",
			in:   replaceLine(clientBase, 2, `role = "server"`),
			want: []string{`t.toml: listen: required for a server: add a [listen] section with the addr nodes below send to`},
		},
		{
			name: "central with capture and route, without listen",
			in:   replaceLine(clientBase, 2, `role = "central"`),
			want: []string{
				`t.toml: listen: required for central: add a [listen] section with the addr servers send to`,
				`t.toml:5: capture: central captures nothing: remove [capture]`,
				`t.toml:7: route[0]: central forwards nothing: remove every [[route]]`,
			},
		},
		{
			name: "route kind missing",
			in:   replaceLine(clientBase, 8, ""),
			want: []string{`t.toml:7: route[0].kind: required: one of "rest", "postgres" or "file"`},
		},
		{
			name: "route kind unknown",
			in:   replaceLine(clientBase, 8, `kind = "sftp"`),
			want: []string{`t.toml:8: route[0].kind: want one of "rest", "postgres" or "file", got "sftp"`},
		},
		{
			name: "rest url missing",
			in:   replaceLine(clientBase, 9, ""),
			want: []string{`t.toml:7: route[0].url: required: the upstream's address, such as http://community.local:8470`},
		},
		{
			name: "rest url not http",
			in:   replaceLine(clientBase, 9, `url = "ftp://x"`),
			want: []string{`t.toml:9: route[0].url: want an http or https URL, got "ftp://x"`},
		},
		{
			name: "rest url password masked",
			in:   replaceLine(clientBase, 9, `url = "ftp://u:s3cret@x"`),
			want: []string{`t.toml:9: route[0].url: want an http or https URL, got "ftp://u:xxxxx@x"`},
		},
		{
			name: "rest url without scheme",
			in:   replaceLine(clientBase, 9, `url = "community.local:8470"`),
			want: []string{`t.toml:9: route[0].url: want an http or https URL, got "community.local:8470"`},
		},
		{
			name: "rest url unparseable, not echoed",
			in:   replaceLine(clientBase, 9, `url = "http://u:s3cret@x:port"`),
			want: []string{`t.toml:9: route[0].url: want an http or https URL, got a URL that does not parse`},
		},
		{
			name: "rest token missing",
			in:   replaceLine(clientBase, 10, ""),
			want: []string{`t.toml:7: route[0]: a rest route needs a token: set token-file to a file holding it, or token-env to a variable holding it; "pgcourier token --node laptop-07" makes one`},
		},
		{
			name: "rest token file and env",
			in:   replaceLine(clientBase, 10, "token-file = \"/t\"\ntoken-env = \"TOKEN\""),
			want: []string{`t.toml:11: route[0].token-env: set token-file or token-env, not both`},
		},
		{
			name: "rest token env holding a token",
			in:   replaceLine(clientBase, 10, `token-env = "s3cret-token-value"`),
			want: []string{`t.toml:10: route[0].token-env: want the name of an environment variable (letters, digits and '_'), such as PGCOURIER_TOKEN, not the token itself`},
		},
		{
			name: "rest route with keys of other kinds",
			in:   clientBase + "dir = \"/d\"\npassword-file = \"/p\"\n",
			want: []string{
				`t.toml:11: route[0].dir: a rest route does not use dir: remove it`,
				`t.toml:12: route[0].password-file: a rest route does not use password-file: remove it`,
			},
		},
		{
			name: "postgres route",
			in: clientBase + `[[route]]
kind = "postgres"
[[route]]
kind = "postgres"
url = "http://community.local:5432/edc"
token-file = "/t"
[[route]]
kind = "postgres"
url = "postgres://h:99999/edc"
password-file = "/p"
`,
			want: []string{
				`t.toml:11: route[1].url: required: the upstream database, such as postgres://pgcourier@community.local:5432/edc`,
				`t.toml:15: route[2].url: want a postgres:// or postgresql:// URL, got "http://community.local:5432/edc"`,
				`t.toml:16: route[2].token-file: a postgres route does not use token-file: remove it`,
				`t.toml:19: route[3].url: not a valid connection string; want a URL such as postgres://USER@HOST:5432/DBNAME`,
			},
		},
		{
			name: "file route",
			in:   clientBase + "[[route]]\nkind = \"file\"\n[[route]]\nkind = \"file\"\ndir = \"/d\"\nurl = \"http://x\"\n",
			want: []string{
				`t.toml:11: route[1].dir: required: the folder batch files are written to, such as /media/usb/pgcourier`,
				`t.toml:16: route[2].url: a file route does not use url: remove it`,
			},
		},
		{
			name: "listen addr missing",
			in:   replaceLine(centralBase, 6, ""),
			want: []string{`t.toml:5: listen.addr: required: the host:port to listen on, such as "0.0.0.0:8470"`},
		},
		{
			name: "listen addr without port",
			in:   replaceLine(centralBase, 6, `addr = "8470"`),
			want: []string{`t.toml:6: listen.addr: want host:port, such as "0.0.0.0:8470", got "8470"`},
		},
		{
			name: "listen port not numeric",
			in:   replaceLine(centralBase, 6, `addr = "0.0.0.0:http"`),
			want: []string{`t.toml:6: listen.addr: want a port number from 0 to 65535, got "http"`},
		},
		{
			name: "listen port too large",
			in:   replaceLine(centralBase, 6, `addr = "0.0.0.0:84700"`),
			want: []string{`t.toml:6: listen.addr: want a port number from 0 to 65535, got "84700"`},
		},
		{
			name: "tls cert without key",
			in:   centralBase + "tls-cert = \"/c\"\n",
			want: []string{`t.toml:5: listen.tls-key: required when tls-cert is set: the certificate's private key file`},
		},
		{
			name: "tls key without cert",
			in:   centralBase + "tls-key = \"/k\"\n",
			want: []string{`t.toml:5: listen.tls-cert: required when tls-key is set: the certificate file`},
		},
		{
			name: "max body bytes not positive",
			in:   centralBase + "max-body-bytes = 0\n",
			want: []string{`t.toml:7: listen.max-body-bytes: want a number of bytes above 0, got 0; the default is 67108864 (64 MiB)`},
		},
		{
			name: "listen sources",
			in: centralBase + `[[listen.source]]
token-sha256 = "` + hash + `"
[[listen.source]]
node = "Laptop"
token-sha256 = "` + hash + `"
[[listen.source]]
node = "central"
token-sha256 = "` + hash + `"
[[listen.source]]
node = "laptop-07"
token-sha256 = "` + hash + `"
[[listen.source]]
node = "laptop-07"
token-sha256 = "` + strings.ToUpper(hash) + `"
[[listen.source]]
node = "laptop-08"
token-sha256 = "s3cret-token"
[[listen.source]]
node = "laptop-09"
`,
			want: []string{
				`t.toml:7: listen.source[0].node: required: the id of the node allowed to send, such as "laptop-07"`,
				`t.toml:10: listen.source[1].node: node id "Laptop": use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit`,
				`t.toml:13: listen.source[2].node: "central" is this node's own id, and a node never accepts its own batches: remove this source`,
				`t.toml:19: listen.source[4].node: "laptop-07" is already listed as listen.source[3]: list each node once`,
				`t.toml:20: listen.source[4].token-sha256: want 64 lowercase hex characters: "pgcourier token --node laptop-07" prints it`,
				`t.toml:23: listen.source[5].token-sha256: want 64 lowercase hex characters: "pgcourier token --node laptop-08" prints it`,
				`t.toml:24: listen.source[6].token-sha256: want 64 lowercase hex characters: "pgcourier token --node laptop-09" prints it`,
			},
		},
		{
			name: "capture tables missing",
			in:   replaceLine(clientBase, 6, ""),
			want: []string{`t.toml:5: capture.tables: required: the tables to capture, such as ["public.*"]`},
		},
		{
			name: "capture tables empty",
			in:   replaceLine(clientBase, 6, "tables = []"),
			want: []string{`t.toml:6: capture.tables: required: the tables to capture, such as ["public.*"]`},
		},
		{
			name: "capture patterns",
			in: replaceLine(clientBase, 6, `tables = [
  "public",
  "a.b.c",
  ".x",
  "public.[",
  "pgcourier.outbox",
  "pgcourier.*",
]
exclude = ["x", "public.ok"]`),
			want: []string{
				`t.toml:6: capture.tables[0]: table pattern "public": want schema.table, such as public.*`,
				`t.toml:6: capture.tables[1]: table pattern "a.b.c": want schema.table, such as public.*`,
				`t.toml:6: capture.tables[2]: table pattern ".x": want schema.table, such as public.*`,
				`t.toml:6: capture.tables[3]: table pattern "public.[": syntax error in pattern`,
				`t.toml:6: capture.tables[4]: the pgcourier schema holds pgcourier's own state and is never captured: remove "pgcourier.outbox"`,
				`t.toml:6: capture.tables[5]: the pgcourier schema holds pgcourier's own state and is never captured: remove "pgcourier.*"`,
				`t.toml:14: capture.exclude[0]: table pattern "x": want schema.table, such as public.*`,
			},
		},
		{
			name: "publication and slot",
			in:   replaceLine(clientBase, 6, "tables = [\"public.*\"]\npublication = \"\"\nslot = \"pgcourier-laptop\""),
			want: []string{
				`t.toml:7: capture.publication: want 1 to 63 lowercase letters, digits and '_', got 0 characters`,
				`t.toml:8: capture.slot: want 1 to 63 lowercase letters, digits and '_', got "pgcourier-laptop"`,
			},
		},
		{
			name: "retention",
			in:   replaceLine(clientBase, 6, "tables = [\"public.*\"]\nretention = \"7d\""),
			want: []string{`t.toml:7: capture.retention: want a duration such as "24h" or "168h", got "7d"`},
		},
		{
			name: "negative retention",
			in:   replaceLine(clientBase, 6, "tables = [\"public.*\"]\nretention = \"-1h\""),
			want: []string{`t.toml:7: capture.retention: want a duration such as "24h" or "168h", got "-1h"`},
		},
		{
			name: "retention under a minute",
			in:   replaceLine(clientBase, 6, "tables = [\"public.*\"]\nretention = \"0s\""),
			want: []string{`t.toml:7: capture.retention: want at least "1m", got "0s": acknowledged batches are kept at least a minute`},
		},
		{
			name: "slot too long",
			in:   replaceLine(clientBase, 6, "tables = [\"public.*\"]\nslot = \""+strings.Repeat("s", 64)+"\""),
			want: []string{`t.toml:7: capture.slot: want 1 to 63 lowercase letters, digits and '_', got 64 characters`},
		},
		{
			name: "default slot of an invalid node is not reported twice",
			in:   replaceLine(clientBase, 1, `node = "Laptop"`),
			want: []string{`t.toml:1: node: node id "Laptop": use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit`},
		},
		{
			name: "apply and log",
			in:   clientBase + "[apply]\nconflict = \"first-writer-wins\"\n[log]\nlevel = \"trace\"\nformat = \"xml\"\n",
			want: []string{
				`t.toml:12: apply.conflict: want "last-writer-wins" or "reject", got "first-writer-wins"`,
				`t.toml:14: log.level: want "debug", "info", "warn" or "error", got "trace"`,
				`t.toml:15: log.format: want "text" or "json", got "xml"`,
			},
		},
		{
			name: "several problems at once",
			in: `role = "client"
[database]
[capture]
tables = ["public"]
[[route]]
kind = "rest"
url = "ftp://x"
[log]
level = "loud"
`,
			want: []string{
				`t.toml: node: required: the node's unique, stable id, such as "laptop-07"`,
				`t.toml:2: database.url: required: the node's own database, such as postgres://pgcourier@127.0.0.1:5432/edc`,
				`t.toml:4: capture.tables[0]: table pattern "public": want schema.table, such as public.*`,
				`t.toml:5: route[0]: a rest route needs a token: set token-file to a file holding it, or token-env to a variable holding it; "pgcourier token --node ID" makes one`,
				`t.toml:7: route[0].url: want an http or https URL, got "ftp://x"`,
				`t.toml:9: log.level: want "debug", "info", "warn" or "error", got "loud"`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in), "t.toml")
			if err != nil {
				t.Fatalf("Parse(%q) error = %v, want nil", tt.in, err)
			}
			err = c.Validate()
			if diff := cmp.Diff(tt.want, problemStrings(t, err)); diff != "" {
				t.Errorf("Validate() of %q (-want +got):\n%s", tt.in, diff)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("Validate() of %q = %v, want no secret in it", tt.in, err)
			}
		})
	}
}

func TestValidateWithoutFile(t *testing.T) {
	c := &Config{
		Role:     pgcourier.RoleCentral,
		Database: Database{URL: "postgres://127.0.0.1/edc"},
		Listen:   &Listen{Addr: ":8470", MaxBodyBytes: DefaultMaxBodyBytes},
		Apply:    Apply{Conflict: ConflictReject},
		Log:      Log{Level: "warn", Format: "json"},
	}
	want := []string{`node: required: the node's unique, stable id, such as "laptop-07"`}
	if diff := cmp.Diff(want, problemStrings(t, c.Validate())); diff != "" {
		t.Errorf("Validate() of %+v (-want +got):\n%s", c, diff)
	}
}
