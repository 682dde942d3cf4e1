package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three Postgres clusters")
	}
	// A TMPDIR of the demo's own, so that only its leftovers are in it
	// (another demo may run beside this one). Postgres, run as another
	// account under root, must be able to enter it.
	tmp, err := os.MkdirTemp("", "pgcourier-demotest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	var out, errOut bytes.Buffer
	code := run(ctx, []string{"demo"}, &out, &errOut)
	if code != exitOK {
		t.Fatalf("pgcourier demo = exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitOK, out.String(), errOut.String())
	}

	for _, table := range demoTables {
		re := regexp.MustCompile(`(?m)^  ` + table + `: +(\d+) rows on the server = (\d+) \+ (\d+) from the laptops ✓$`)
		m := re.FindStringSubmatch(out.String())
		if m == nil {
			t.Errorf("pgcourier demo printed no match for %s, want a line matching %s\nstdout:\n%s", table, re, out.String())
			continue
		}
		server, _ := strconv.Atoi(m[1])
		a, _ := strconv.Atoi(m[2])
		b, _ := strconv.Atoi(m[3])
		if a == 0 || b == 0 || server != a+b {
			t.Errorf("pgcourier demo: %s: %d rows on the server from %d + %d on the laptops, want a non-empty sum", table, server, a, b)
		}
		if table == "subjects" && (a != demoSubjects || b != demoSubjects) {
			t.Errorf("pgcourier demo: subjects: %d + %d on the laptops, want %d each", a, b, demoSubjects)
		}
	}

	// Only the cached initdb template may stay.
	entries, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "pgcourier-pgtemplate-") {
			t.Errorf("pgcourier demo left %s behind", filepath.Join(tmp, e.Name()))
		}
	}
}

func TestDemoUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"demo", "extra"}, &out, &errOut); code != exitUsage {
		t.Errorf("pgcourier demo extra = exit %d, want %d", code, exitUsage)
	}
	if want := `unexpected argument "extra"`; !bytes.Contains(errOut.Bytes(), []byte(want)) {
		t.Errorf("pgcourier demo extra: stderr = %q, want it to contain %q", errOut.String(), want)
	}
}
