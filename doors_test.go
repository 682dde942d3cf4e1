package pgcourier_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/pgcourier/pgcourier"

// listedPackage is the part of "go list -json" output the door rules read.
type listedPackage struct {
	ImportPath string
	Imports    []string // direct imports, tests excluded
	Deps       []string // every transitive dependency, tests excluded
	Standard   bool
}

// TestDoors keeps the package picture of STYLE.md true: which package may
// import which.
func TestDoors(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]listedPackage{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs[strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")] = p
	}
	if len(pkgs) < 3 {
		t.Fatalf("go list found %d packages, want the whole module", len(pkgs))
	}

	// The vocabulary depends on the standard library only.
	for _, d := range pkgs[""].Deps {
		if !isStandard(d) {
			t.Errorf("the root package depends on %s; it may use the standard library only", d)
		}
	}
	// sql/ holds embedded SQL and nothing else.
	for _, d := range pkgs["sql"].Imports {
		if d != "embed" {
			t.Errorf("sql imports %s; it may import only embed", d)
		}
	}
	for name, p := range pkgs {
		for _, imp := range p.Imports {
			rel, ours := strings.CutPrefix(imp, module+"/")
			if !ours {
				continue
			}
			if rel == "config" && !strings.HasPrefix(name, "cmd/") && name != "integration" {
				t.Errorf("%s imports config; only cmd/ and integration/ may (pass plain option structs instead)", name)
			}
			if rel == "internal/pgtest" && !strings.HasPrefix(name, "cmd/") && name != "bench" && name != "integration" && name != "internal/sinktest" {
				t.Errorf("%s imports internal/pgtest outside its tests", name)
			}
		}
	}
	forbidden := map[string][]string{
		"capture": {module + "/apply", module + "/router", module + "/config"},
		"apply":   {module + "/capture", module + "/router", module + "/config"},
		"router":  {"net/http", "github.com/jackc/pgx/v5", module + "/config"},
	}
	for name, bad := range forbidden {
		p, ok := pkgs[name]
		if !ok {
			continue // the package does not exist yet
		}
		for _, imp := range p.Imports {
			for _, b := range bad {
				if imp == b || strings.HasPrefix(imp, b+"/") {
					t.Errorf("%s imports %s, which STYLE.md keeps out of it", name, imp)
				}
			}
		}
	}
}

// isStandard reports whether an import path belongs to the standard library:
// its first element has no dot.
func isStandard(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}
