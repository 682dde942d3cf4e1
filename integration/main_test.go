package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pgcourierBin is the pgcourier binary TestMain built for the tests, and
// buildErr why it could not be built.
var (
	pgcourierBin string
	buildErr     error
)

// TestMain builds cmd/pgcourier once for every test. The binary is built
// without the race detector: the nodes run as separate processes, and a
// race-instrumented daemon would only slow the tests down.
func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "pgcourier-integration-*")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	pgcourierBin = filepath.Join(dir, "pgcourier")
	out, err := exec.Command("go", "build", "-o", pgcourierBin, "github.com/pgcourier/pgcourier/cmd/pgcourier").CombinedOutput()
	if err != nil {
		buildErr = fmt.Errorf("go build ./cmd/pgcourier: %v\n%s", err, out)
	}
	return m.Run()
}

// requireBinary skips the test under -short and fails it when the binary
// could not be built.
func requireBinary(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped under -short")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}
