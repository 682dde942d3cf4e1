package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// runCmd runs the command line and returns its exit code and output.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// clientConfig writes a client configuration for the database at url and
// returns its path.
func clientConfig(t *testing.T, url string) string {
	t.Helper()
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "client.toml")
	text := fmt.Sprintf(`node = "laptop-07"
role = "client"

[database]
url = %q

[capture]
tables = ["public.*"]

[[route]]
kind = "rest"
url = "http://127.0.0.1:8470"
token-file = %q
`, url, token)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUsageErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("node = \"laptop-07\"\nrole = \"hub\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args    []string
		wantErr string
	}{
		{nil, "Usage: pgcourier"},
		{[]string{"fly"}, `unknown command "fly"`},
		{[]string{"init"}, "missing -c FILE"},
		{[]string{"doctor", "-c"}, "flag needs an argument"},
		{[]string{"init", "-c", filepath.Join(t.TempDir(), "none.toml")}, "none.toml"},
		{[]string{"doctor", "-c", bad}, "bad.toml:2: role"},
		{[]string{"token"}, "--node"},
		{[]string{"token", "--node", "Laptop 7"}, "node id"},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := runCmd(t, tt.args...)
			if code != exitUsage {
				t.Errorf("run(%q) = %d, want %d", tt.args, code, exitUsage)
			}
			if !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("run(%q) stderr = %q, want it to contain %q", tt.args, stderr, tt.wantErr)
			}
			if strings.Contains(stderr, "goroutine ") {
				t.Errorf("run(%q) printed a stack trace: %s", tt.args, stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCmd(t, "version")
	if code != exitOK || !strings.HasPrefix(stdout, "pgcourier ") {
		t.Errorf("version = %d, %q; want 0 and a line starting with pgcourier", code, stdout)
	}
}

func TestToken(t *testing.T) {
	code, stdout, stderr := runCmd(t, "token", "--node", "laptop-07")
	if code != exitOK {
		t.Fatalf("token = %d, stderr %q", code, stderr)
	}
	m := regexp.MustCompile(`(?s)^([A-Za-z0-9_-]{43})\n.*node = "laptop-07"\ntoken-sha256 = "([0-9a-f]{64})"\n$`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("token output = %q, want a token and the [[listen.source]] lines", stdout)
	}
	_, again, _ := runCmd(t, "token", "--node", "laptop-07")
	if strings.HasPrefix(again, m[1]) {
		t.Error("two token runs printed the same token")
	}
}

func TestInitTwice(t *testing.T) {
	c := pgtest.Start(t)
	cfg := clientConfig(t, c.URL())

	code, stdout, stderr := runCmd(t, "init", "-c", cfg)
	if code != exitOK || !strings.Contains(stdout, "applied migration 0001_node") {
		t.Fatalf("first init = %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = runCmd(t, "init", "-c", cfg)
	if code != exitOK || !strings.Contains(stdout, "already at version") {
		t.Fatalf("second init = %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestDoctor(t *testing.T) {
	logical := pgtest.Start(t)
	replica := pgtest.Start(t, pgtest.Options{Settings: map[string]string{"wal_level": "replica"}})

	t.Run("healthy after init", func(t *testing.T) {
		cfg := clientConfig(t, logical.URL())
		if code, _, stderr := runCmd(t, "init", "-c", cfg); code != exitOK {
			t.Fatalf("init = %d: %s", code, stderr)
		}
		code, stdout, stderr := runCmd(t, "doctor", "-c", cfg)
		if code != exitOK || strings.Contains(stdout, "FAIL") {
			t.Errorf("doctor = %d\n%s%s", code, stdout, stderr)
		}
	})
	t.Run("wal_level replica", func(t *testing.T) {
		cfg := clientConfig(t, replica.URL())
		code, stdout, _ := runCmd(t, "doctor", "-c", cfg)
		if code != exitFail {
			t.Errorf("doctor = %d, want %d", code, exitFail)
		}
		want := "FAIL  wal_level: replica, capture needs logical\n      fix: ALTER SYSTEM SET wal_level = logical;"
		if !strings.Contains(stdout, want) {
			t.Errorf("doctor output:\n%s\nwant it to contain:\n%s", stdout, want)
		}
	})
	t.Run("unreachable database", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		cfg := clientConfig(t, "postgres://postgres@"+addr+"/edc?sslmode=disable")
		code, stdout, _ := runCmd(t, "doctor", "-c", cfg)
		if code != exitFail {
			t.Errorf("doctor = %d, want %d", code, exitFail)
		}
		want := "cannot connect to the database at " + addr + " (user postgres, database edc): connection refused"
		if !strings.Contains(stdout, want) {
			t.Errorf("doctor output:\n%s\nwant it to contain %q", stdout, want)
		}
		code, _, stderr := runCmd(t, "init", "-c", cfg)
		if code != exitFail || !strings.Contains(stderr, want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("init = %d, stderr %q; want %d and one line containing %q", code, stderr, exitFail, want)
		}
	})
}

func TestConflicts(t *testing.T) {
	c := pgtest.Start(t)
	cfg := clientConfig(t, c.URL())
	if code, _, stderr := runCmd(t, "init", "-c", cfg); code != exitOK {
		t.Fatalf("init = %d: %s", code, stderr)
	}
	code, stdout, stderr := runCmd(t, "conflicts", "-c", cfg)
	if code != exitOK || stdout != "laptop-07: no open conflicts\n" {
		t.Errorf("conflicts on an empty table = %d, %q, %q; want 0 and no open conflicts", code, stdout, stderr)
	}
	c.Exec(t, `INSERT INTO pgcourier.conflicts (source, epoch, seq, op, rule, table_schema, table_name, incoming, stored, stored_source, detail)
		VALUES ('laptop-08', 1, 7, 'insert', 'key_collision', 'public', 'subject', '{"id": "5"}', '{"id": "5"}', 'laptop-09', 'two laptops made the same id')`)
	code, stdout, _ = runCmd(t, "conflicts", "-c", cfg)
	for _, want := range []string{"laptop-08 seq 7  insert public.subject  key_collision  [open]", `incoming: {"id": "5"}`, "by laptop-09"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("conflicts = %d, output:\n%s\nwant it to contain %q", code, stdout, want)
		}
	}
	code, stdout, _ = runCmd(t, "conflicts", "-c", cfg, "--json")
	if code != exitOK || !strings.Contains(stdout, `"rule": "key_collision"`) || !strings.HasPrefix(stdout, "[") {
		t.Errorf("conflicts --json = %d, %s; want a JSON array with the conflict", code, stdout)
	}
}
