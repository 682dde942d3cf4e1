package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// errPortInUse reports that postgres could not bind its port because another
// process holds it.
var errPortInUse = errors.New("port taken by another process")

// process is a running postmaster. Its wait goroutine, started with it, reaps
// it and then closes done; whoever stops the server waits for done.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, readable after done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startLocked starts postgres and waits until it accepts connections. On
// failure no process is left behind and c.proc is nil. c.mu must be held.
func (c *Cluster) startLocked(ctx context.Context) error {
	logf, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	cmd := exec.Command(filepath.Join(c.bin, "postgres"), "-D", c.dataDir)
	cmd.Dir = c.dir
	cmd.Env = childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.acct.credential(),
		// A process group of its own, so that signals meant for the test
		// binary's group (^C) leave it alone and Kill can signal the group.
		Setpgid: true,
		// A safety net: the server dies with the test binary.
		Pdeathsig: syscall.SIGKILL,
	}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.proc = p

	if err := c.waitReady(ctx, p); err != nil {
		if kerr := c.killLocked(); kerr != nil {
			err = errors.Join(err, kerr)
		}
		return err
	}
	return nil
}

// waitReady polls the server until it accepts connections, the process
// exits, or the start timeout or ctx ends.
func (c *Cluster) waitReady(ctx context.Context, p *process) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	// Stop a connection attempt as soon as the process exits: if another
	// process holds the port, it may accept and never answer.
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	})
	defer func() {
		cancel()
		wg.Wait()
	}()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.exited() {
			if !portFree(c.port) || logMentionsBind(c.logPath) {
				return fmt.Errorf("start postgres on port %d: %w", c.port, errPortInUse)
			}
			return c.startError(fmt.Errorf("server exited: %w", p.err))
		}
		if c.ping(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			if p.exited() {
				continue
			}
			return c.startError(fmt.Errorf("not accepting connections: %w", ctx.Err()))
		case <-p.done:
		case <-tick.C:
		}
	}
}

// startError is a failure to start postgres, shown with the end of the
// server log, which usually says why.
type startError struct {
	err  error
	log  string
	tail string
}

func (c *Cluster) startError(err error) error {
	return &startError{err: err, log: c.logPath, tail: tail(c.logPath, 20)}
}

func (e *startError) Error() string {
	return fmt.Sprintf("start postgres: %v; last lines of %s:\n%s", e.err, e.log, e.tail)
}

func (e *startError) Unwrap() error { return e.err }

// ping reports whether this cluster's server, and not some other server that
// took its port, accepts connections.
func (c *Cluster) ping(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		return false
	}
	defer conn.Close(ctx)
	var dir string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dir); err != nil {
		return false
	}
	return dir == c.dataDir
}

// stopLocked asks the postmaster for a fast shutdown and waits up to grace
// for it to exit; after that, or when ctx ends, it kills the server. c.mu
// must be held.
func (c *Cluster) stopLocked(ctx context.Context, grace time.Duration) error {
	p := c.proc
	if p == nil {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop postgres: %w", err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		// The postmaster exits only after all of its children.
		c.proc = nil
		return nil
	case <-timer.C:
		if err := c.killLocked(); err != nil {
			return fmt.Errorf("stop postgres: %w", err)
		}
		return fmt.Errorf("stop postgres: no exit within %v, killed it", grace)
	case <-ctx.Done():
		if err := c.killLocked(); err != nil {
			return fmt.Errorf("stop postgres: %w", err)
		}
		return fmt.Errorf("stop postgres: killed it: %w", ctx.Err())
	}
}

// killLocked kills the postmaster and all of its children at once and waits
// until they are gone. c.mu must be held.
//
// Every postgres child process calls setsid, so killing the postmaster's
// process group alone would leave backends running for a moment, still
// able to write. Instead, freeze the postmaster so that it forks no more,
// freeze its children, then SIGKILL the lot.
func (c *Cluster) killLocked() error {
	p := c.proc
	if p == nil {
		return nil
	}
	var children []procID
	// Signal the postmaster through its os.Process, which knows whether it
	// has been reaped, so that a recycled PID is never signalled.
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err == nil {
		pid := p.cmd.Process.Pid
		children = childrenOf(pid)
		for _, ch := range children {
			syscall.Kill(ch.pid, syscall.SIGSTOP)
		}
		for _, ch := range children {
			syscall.Kill(ch.pid, syscall.SIGKILL)
		}
		// While it is stopped and unreaped, its PID and process group
		// cannot be reused.
		syscall.Kill(-pid, syscall.SIGKILL)
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		return fmt.Errorf("kill postgres: pid %d still running after SIGKILL", p.cmd.Process.Pid)
	}
	c.proc = nil
	deadline := time.Now().Add(stopTimeout)
	for _, ch := range children {
		for ch.alive() {
			if time.Now().After(deadline) {
				return fmt.Errorf("kill postgres: child pid %d still running after SIGKILL", ch.pid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// procID identifies a process across PID reuse.
type procID struct {
	pid   int
	start string // start time in clock ticks since boot, from /proc/pid/stat
}

// alive reports whether the process still exists and has not exited: a
// zombie has released its memory and counts as gone.
func (p procID) alive() bool {
	st, ok := readStat(p.pid)
	return ok && st.start == p.start && st.state != "Z"
}

type procStat struct {
	state string
	ppid  int
	start string
}

// readStat parses /proc/pid/stat.
func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name in parentheses may itself contain spaces and
	// parentheses; the fields after the last ')' are plain.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime).
	if len(f) < 20 {
		return procStat{}, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, false
	}
	return procStat{state: f[0], ppid: ppid, start: f[19]}, true
}

// childrenOf lists the live child processes of pid.
func childrenOf(pid int) []procID {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procID
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(child); ok && st.ppid == pid {
			out = append(out, procID{pid: child, start: st.start})
		}
	}
	return out
}

// childEnv is the test binary's environment without libpq and server
// variables (PGDATA, PGPORT, ...) that could change what initdb or postgres
// do.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// ports holds the ports of this process's live local clusters, so that two
// clusters started at the same moment do not pick the same one.
var ports = struct {
	sync.Mutex
	used map[int]bool
}{used: map[int]bool{}}

// pickPort returns a port that is free on the loopback interface right now.
// Tests replace it.
var pickPort = func() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// reservePort picks a free port that no other cluster of this process uses.
func reservePort() (int, error) {
	ports.Lock()
	defer ports.Unlock()
	for range 50 {
		port, err := pickPort()
		if err != nil {
			return 0, err
		}
		if !ports.used[port] {
			ports.used[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}

func releasePort(port int) {
	ports.Lock()
	defer ports.Unlock()
	delete(ports.used, port)
}

// portFree reports whether port can be bound on 127.0.0.1.
func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// logMentionsBind reports whether the end of the server log says the
// postmaster could not bind its socket. It backs up the portFree probe for
// when the other holder let go of the port in the meantime.
func logMentionsBind(path string) bool {
	return strings.Contains(tail(path, 20), "could not bind IPv4 address")
}

// tail returns the last n lines of the file at path, or a note saying why it
// cannot.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	// The last 64 KiB hold the last n lines unless they are very long.
	const window = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > window {
		if _, err := f.Seek(-window, io.SeekEnd); err != nil {
			return fmt.Sprintf("(no log: %v)", err)
		}
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, window)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "(log is empty)"
	}
	return strings.Join(lines, "\n")
}

// removeSharedMemory removes the System V shared memory segment that a
// killed postmaster leaves behind, named in its postmaster.pid. A clean
// shutdown removes both; a later Start would remove the segment too, but a
// cluster closed after Kill would leak it.
func removeSharedMemory(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	// Line 7 holds the segment's key and id.
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return
	}
	id, err := strconv.Atoi(f[1])
	if err != nil || id < 0 {
		return
	}
	const ipcRMID = 0
	syscall.Syscall(syscall.SYS_SHMCTL, uintptr(id), ipcRMID, 0)
}
