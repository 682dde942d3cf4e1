package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that no input makes Parse or Validate panic, and that
// every error they return is made of *Problem values.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("..", "deploy", "*.toml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"node = \n",
		"[[route]]\nkind = 'rest'\n[[route]]\ntoken_file = 1\n",
		"[listen]\n[[listen.source]]\nnode = \"a\"\n[[listen.source]]\n",
		"database = { url = \"postgres://u:p@h:x/db\" }\nroute = [{kind = \"x\"}, 7]\n",
		"capture.tables = [\"public.*\", \"pgcourier.*\", \"[\"]\n\"quoted.key\" = '''\nx = 1\n'''\n",
		"[a.\"b.c\"]\n[[a.d]]\n[a]\n",
		"node = \"laptop-07\"\nrole = \"central\"\n[listen]\naddr = \"[::1]:99999\"\nmax-body-bytes = -1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.toml")
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			return
		}
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			var p *Problem
			if !errors.As(e, &p) {
				t.Fatalf("Parse or Validate of %q: error %q is a %T, want a *Problem", data, e, e)
			}
		}
	})
}
