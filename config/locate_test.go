package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLocateKeys(t *testing.T) {
	in := "\uFEFF" + `# comment with key = "value"
node = "laptop-07" # trailing comment
role = 'client'

[database]
url = """
postgres://h/db
not-a-key = 1
"""
"password-file" = '''
[not.a.table]
'''

[capture]
tables = [
  "public.*",  # a comment ] with a bracket
  "other.*",
]
exclude = ["a.b", "c.[d]"]

[[route]]
kind = "rest"
url = "http://x\"y = z"

[[route]]
kind = "file"
dir.sub = "/d"

[ listen ]
addr = ":8470"
[[listen.source]]
node = "a"
[[listen.source]]
  node   =   "b"
  "token-sha256" = "abc"
[apply]
conflict = { a = 1, b = [1,
  2] }
[log]
level = "info"` + "\r\nformat = \"json\"\r\n"

	want := map[string]int{
		"node":                          2,
		"role":                          3,
		"database":                      5,
		"database.url":                  6,
		"database.password-file":        10,
		"capture":                       14,
		"capture.tables":                15,
		"capture.exclude":               19,
		"route[0]":                      21,
		"route[0].kind":                 22,
		"route[0].url":                  23,
		"route[1]":                      25,
		"route[1].kind":                 26,
		"route[1].dir":                  27,
		"route[1].dir.sub":              27,
		"listen":                        29,
		"listen.addr":                   30,
		"listen.source[0]":              31,
		"listen.source[0].node":         32,
		"listen.source[1]":              33,
		"listen.source[1].node":         34,
		"listen.source[1].token-sha256": 35,
		"apply":                         36,
		"apply.conflict":                37,
		"log":                           39,
		"log.level":                     40,
		"log.format":                    41,
	}
	if diff := cmp.Diff(want, locateKeys(in)); diff != "" {
		t.Errorf("locateKeys (-want +got):\n%s", diff)
	}
}

func TestLocateNestedArrays(t *testing.T) {
	in := `[[a]]
[[a.b]]
[[a.b]]
[[a]]
[a.c]
[[a.b]]
x = 1
`
	want := map[string]int{
		"a[0]":        1,
		"a[0].b[0]":   2,
		"a[0].b[1]":   3,
		"a[1]":        4,
		"a[1].c":      5,
		"a[1].b[0]":   6,
		"a[1].b[0].x": 7,
	}
	if diff := cmp.Diff(want, locateKeys(in)); diff != "" {
		t.Errorf("locateKeys (-want +got):\n%s", diff)
	}
}

func TestLineOf(t *testing.T) {
	lines := map[string]int{"route": 3, "route[1]": 7, "route[1].url": 8, `"a.b"`: 9}
	tests := []struct {
		key  string
		want int
	}{
		{"route[1].url", 8},
		{"route[1].token-file", 7},
		{"route[0].kind", 3},
		{"route[1].x[2].y", 7},
		{`"a.b".c`, 9},
		{"listen.addr", 0},
		{"", 0},
	}
	for _, tt := range tests {
		if got := lineOf(lines, tt.key); got != tt.want {
			t.Errorf("lineOf(%q) = %d, want %d", tt.key, got, tt.want)
		}
	}
}

func TestStripIndexes(t *testing.T) {
	tests := []struct{ in, want string }{
		{"route[1].url", "route.url"},
		{"listen.source[12].node", "listen.source.node"},
		{`"a[1]".b[0]`, `"a[1]".b`},
		{"node", "node"},
	}
	for _, tt := range tests {
		if got := stripIndexes(tt.in); got != tt.want {
			t.Errorf("stripIndexes(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestClosestKey(t *testing.T) {
	names := []string{"kind", "url", "token-file", "token-env", "password-file", "dir"}
	tests := []struct{ in, want string }{
		{"token_file", "token-file"},
		{"TOKEN-ENV", "token-env"},
		{"tokenfile", "token-file"},
		{"pasword-file", "password-file"},
		{"knd", "kind"},
		{"uri", "url"},
		{"directory", ""},
		{"token", ""},
		{"x", ""},
	}
	for _, tt := range tests {
		if got := closestKey(tt.in, names); got != tt.want {
			t.Errorf("closestKey(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
