package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// Route kinds a client's config may list, in the order given.
const (
	viaREST     = config.RouteREST
	viaPostgres = config.RoutePostgres
)

// logDirEnv names a directory to keep the nodes' logs in after a test, as
// TEST-NODE.log; without it they go with the test's temporary directory.
const logDirEnv = "PGCOURIER_TEST_LOGDIR"

// serverID is the node id of the community server in every topology.
const serverID = "site-test"

// topology is one community server and the field laptops that send to it,
// each with its own cluster, config file and pgcourier process.
type topology struct {
	t       *testing.T
	server  *node
	clients []*node
}

// node is one pgcourier node: its database, its config file and its
// "pgcourier run" process, which the test starts, stops and kills.
type node struct {
	t       *testing.T
	id      string
	db      *pgtest.Cluster
	config  string // path of the TOML file
	logPath string // the process's stdout and stderr, every start appended
	index   int    // clients: 0, 1, …

	token     string // clients: the token of the rest route
	tokenFile string
	addr      string // server: the listen address

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when cmd has exited
	stopping bool          // the running process is being stopped on purpose
	exitErr  error         // how the last process exited
	died     []string      // processes that exited without being asked to
	starts   int
}

// newTopology starts the clusters of a server and n clients, creates the
// test schema in each, writes the configs (clients route over REST only)
// and runs "pgcourier init" on every node. No pgcourier process runs yet.
func newTopology(t *testing.T, n int) *topology {
	t.Helper()
	requireBinary(t)
	dbs := pgtest.StartN(t, n+1, pgtest.Options{Name: "e2e"})
	for _, db := range dbs {
		db.Exec(t, schemaSQL)
	}

	dir := t.TempDir()
	tp := &topology{t: t}
	tp.server = tp.newNode(serverID, dbs[0], dir)
	tp.server.addr = freeAddr(t)
	for i := range n {
		c := tp.newNode(fmt.Sprintf("laptop-%02d", i+1), dbs[i+1], dir)
		c.index = i
		c.token = newToken(t)
		c.tokenFile = filepath.Join(dir, c.id+".token")
		if err := os.WriteFile(c.tokenFile, []byte(c.token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		tp.clients = append(tp.clients, c)
	}
	tp.writeServerConfig()
	for _, c := range tp.clients {
		tp.writeClientConfig(c, viaREST)
	}
	for _, nd := range tp.nodes() {
		nd.init()
	}
	return tp
}

func (tp *topology) newNode(id string, db *pgtest.Cluster, dir string) *node {
	n := &node{
		t:       tp.t,
		id:      id,
		db:      db,
		config:  filepath.Join(dir, id+".toml"),
		logPath: filepath.Join(dir, id+".log"),
	}
	tp.t.Cleanup(n.cleanup)
	return n
}

// nodes returns the server and then the clients.
func (tp *topology) nodes() []*node {
	return append([]*node{tp.server}, tp.clients...)
}

// writeServerConfig writes the server's config: it listens on its address
// and accepts every client's token.
func (tp *topology) writeServerConfig() {
	var b strings.Builder
	fmt.Fprintf(&b, "node = %q\nrole = \"server\"\n\n[database]\nurl = %q\n\n", tp.server.id, tp.server.db.URL())
	fmt.Fprintf(&b, "[listen]\naddr = %q\n", tp.server.addr)
	for _, c := range tp.clients {
		sum := sha256.Sum256([]byte(c.token))
		fmt.Fprintf(&b, "\n[[listen.source]]\nnode = %q\ntoken-sha256 = %q\n", c.id, hex.EncodeToString(sum[:]))
	}
	fmt.Fprintf(&b, "\n[log]\nlevel = \"info\"\n")
	tp.server.writeConfig(b.String())
}

// writeClientConfig writes c's config with routes of the given kinds, in
// that order: viaREST is the server's listener, viaPostgres the server's
// database. A running process keeps its old config until restarted.
func (tp *topology) writeClientConfig(c *node, kinds ...string) {
	var b strings.Builder
	fmt.Fprintf(&b, "node = %q\nrole = \"client\"\n\n[database]\nurl = %q\n\n", c.id, c.db.URL())
	fmt.Fprintf(&b, "[capture]\ntables = [\"public.*\"]\n")
	for _, k := range kinds {
		switch k {
		case viaREST:
			fmt.Fprintf(&b, "\n[[route]]\nkind = \"rest\"\nurl = %q\ntoken-file = %q\n", "http://"+tp.server.addr, c.tokenFile)
		case viaPostgres:
			fmt.Fprintf(&b, "\n[[route]]\nkind = \"postgres\"\nurl = %q\n", tp.server.db.URL())
		default:
			tp.t.Fatalf("writeClientConfig: route kind %q", k)
		}
	}
	fmt.Fprintf(&b, "\n[log]\nlevel = \"info\"\n")
	c.writeConfig(b.String())
}

// writeConfig writes the node's config file and checks that pgcourier will
// accept it.
func (n *node) writeConfig(text string) {
	n.t.Helper()
	if err := os.WriteFile(n.config, []byte(text), 0o600); err != nil {
		n.t.Fatal(err)
	}
	if _, err := config.Load(n.config); err != nil {
		n.t.Fatalf("the test wrote a config pgcourier refuses:\n%s\n%v", text, err)
	}
}

// init runs "pgcourier init" and fails the test unless it exits 0.
func (n *node) init() {
	n.t.Helper()
	out, code := n.command("init", "-c", n.config)
	if code != 0 {
		n.t.Fatalf("pgcourier init -c %s: exit code %d, want 0:\n%s", n.config, code, out)
	}
}

// command runs the pgcourier binary with args, waits for it, and returns
// its combined output and exit code.
func (n *node) command(args ...string) (string, int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgcourierBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit) && exit.Exited():
		return out.String(), exit.ExitCode()
	}
	n.t.Fatalf("pgcourier %s: %v\n%s", strings.Join(args, " "), err, out.String())
	return "", -1
}

// statusReport is the part of "pgcourier status --json" the tests read.
type statusReport struct {
	Node   string `json:"node"`
	Role   string `json:"role"`
	Outbox *struct {
		PendingBatches int `json:"pending_batches"`
		Routes         []struct {
			Route     string `json:"route"`
			LastSeq   uint64 `json:"last_seq"`
			LastError string `json:"last_error"`
		} `json:"routes"`
	} `json:"outbox"`
	Sources []struct {
		Source     string `json:"source"`
		Epoch      int64  `json:"epoch"`
		AppliedSeq uint64 `json:"applied_seq"`
		Batches    int64  `json:"batches"`
	} `json:"sources"`
	Problems []string `json:"problems"`
}

// status runs "pgcourier status --json" and returns the report and the
// exit code; the test fails if the output is not a report.
func (n *node) status() (*statusReport, int) {
	n.t.Helper()
	out, code := n.command("status", "-c", n.config, "--json")
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		n.t.Fatalf("pgcourier status -c %s --json: exit code %d, output is not a report (%v):\n%s", n.config, code, err, out)
	}
	return &rep, code
}

// start starts "pgcourier run" for the node. The process dies with the
// test binary (parent-death signal) and is killed when the test ends.
func (n *node) start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.t.Fatalf("%s: start: pgcourier run is already running", n.id)
	}
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	n.starts++
	fmt.Fprintf(f, "=== %s test: pgcourier run -c %s (start %d)\n", time.Now().Format("15:04:05.000"), filepath.Base(n.config), n.starts)
	cmd := exec.Command(pgcourierBin, "run", "-c", n.config)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("%s: start pgcourier run: %v", n.id, err)
	}
	done, nth := make(chan struct{}), n.starts
	n.cmd, n.done, n.stopping = cmd, done, false
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		if !n.stopping {
			n.died = append(n.died, fmt.Sprintf("%s: pgcourier run (start %d) exited by itself at %s: %v",
				n.id, nth, time.Now().Format("15:04:05.000"), exitText(err)))
		}
		if n.cmd == cmd {
			n.cmd = nil
		}
		n.mu.Unlock()
		close(done)
	}()
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// startServer starts the server's process and waits until its listener
// answers.
func (tp *topology) startServer() {
	tp.t.Helper()
	tp.server.start()
	tp.server.waitListening()
}

// waitListening waits until the node's listener answers /healthz.
func (n *node) waitListening() {
	n.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if healthy(n.addr) {
			return
		}
		n.failIfDied()
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: the listener at %s does not answer /healthz 20s after start", n.id, n.addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// healthy reports whether a listener answers /healthz at addr.
func healthy(addr string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// kill sends SIGKILL to the running process and waits until it is gone.
func (n *node) kill() {
	n.t.Helper()
	n.signal(syscall.SIGKILL, 10*time.Second)
}

// stop sends SIGTERM and waits for a clean exit: exit status 0 within 20
// seconds, else the test fails (and the process is killed).
func (n *node) stop() {
	n.t.Helper()
	if err := n.signal(syscall.SIGTERM, 20*time.Second); err != nil {
		n.t.Errorf("%s: pgcourier run after SIGTERM: %v, want exit status 0", n.id, err)
	}
}

// signal sends sig to the running process and waits up to grace for it to
// exit, then kills it. It returns how the process exited.
func (n *node) signal(sig syscall.Signal, grace time.Duration) error {
	n.t.Helper()
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	if cmd == nil {
		n.mu.Unlock()
		n.t.Fatalf("%s: %v: pgcourier run is not running", n.id, sig)
	}
	n.stopping = true
	n.mu.Unlock()
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("still running %s after %v, killed", grace, sig)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if sig == syscall.SIGKILL {
		return nil
	}
	return n.exitErr
}

// failIfDied fails the test now if a process of the node exited without
// being asked to.
func (n *node) failIfDied() {
	n.t.Helper()
	n.mu.Lock()
	died := n.died
	n.mu.Unlock()
	if len(died) > 0 {
		n.t.Fatalf("%s; the end of its log:\n%s", strings.Join(died, "; "), tailFile(n.logPath, 40))
	}
}

// cleanup kills the process, reports processes that died on their own,
// and shows the end of the log if the test failed.
func (n *node) cleanup() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.stopping = true
	n.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		<-done
	}
	n.mu.Lock()
	died := n.died
	n.mu.Unlock()
	for _, d := range died {
		n.t.Error(d)
	}
	if dir := os.Getenv(logDirEnv); dir != "" {
		if data, err := os.ReadFile(n.logPath); err == nil {
			name := strings.NewReplacer("/", "_").Replace(n.t.Name()) + "-" + n.id + ".log"
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				n.t.Errorf("keep the log of %s: %v", n.id, err)
			}
		}
	}
	if n.t.Failed() {
		n.t.Logf("last lines of %s:\n%s", n.logPath, tailFile(n.logPath, 60))
	} else if errs := n.logLines("level=ERROR"); len(errs) > 0 {
		n.t.Logf("%s logged %d errors, the first:\n%s", n.id, len(errs), strings.Join(errs[:min(len(errs), 5)], "\n"))
	}
}

// logLines returns the lines of the node's log that contain s.
func (n *node) logLines(s string) []string {
	f, err := os.Open(n.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeAddr returns a loopback address with a port that is free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newToken returns a random token as "pgcourier token" would make one.
func newToken(t *testing.T) string {
	t.Helper()
	return hex.EncodeToString(randomBytes(32))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}
