package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// decodeSlot names the slot pg_recvlogical drains.
const decodeSlot = "bench_decode"

// decode is pg_recvlogical draining the publication through pgoutput into
// the harness, which parses every message and applies nothing: how fast
// Postgres can decode and send, the ceiling of any capture. Its CPU is that
// of the walsender and pg_recvlogical, its memory that of pg_recvlogical,
// its wire bytes those of the replication connection.
type decode struct {
	e      *env
	stream *streamReader
	meter  meter

	cmd    *exec.Cmd
	stderr lockedBuffer
	exited chan struct{} // closed once pg_recvlogical exited
	exit   error         // its exit status, readable after exited
	done   chan struct{} // closed once the stream reader returned
}

var _ contender = (*decode)(nil)

func (c *decode) live() bool { return true }

// prepare creates the slot, so that the changes from now on wait for
// pg_recvlogical.
func (c *decode) prepare(ctx context.Context, e *env) error {
	c.e = e
	conn, err := pgx.Connect(ctx, e.srcURL)
	if err != nil {
		return fmt.Errorf("create slot: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", decodeSlot); err != nil {
		return fmt.Errorf("create slot: %w", err)
	}
	return nil
}

// start runs pg_recvlogical and returns once its walsender streams. pg_recvlogical writes to a file that the harness
// follows, rather than to a pipe: a pipe wakes the reader for each of the
// two writes per message and slows pg_recvlogical down several times.
func (c *decode) start(ctx context.Context) error {
	bin, err := pgtest.BinDir()
	if err != nil {
		return err
	}
	out := filepath.Join(c.e.dir, "pg_recvlogical.out")
	// pg_recvlogical appends to the file; create it first so that it can be
	// opened for reading now.
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		return fmt.Errorf("start pg_recvlogical: %w", err)
	}
	f, err := os.Open(out)
	if err != nil {
		return fmt.Errorf("start pg_recvlogical: %w", err)
	}
	c.stream = newStreamReader(markerTable)
	c.cmd = exec.Command(filepath.Join(bin, "pg_recvlogical"),
		"--start", "--no-loop",
		"--slot", decodeSlot,
		"--dbname", conninfo(c.e.src.Host(), c.e.src.Port()),
		"--file", out,
		"--fsync-interval", "0", // no fsync; report what it wrote as flushed
		"--status-interval", "1",
		"--option", "proto_version=1",
		"--option", "publication_names="+pubName,
	)
	c.cmd.Env = clientEnv()
	c.cmd.Stderr = &c.stderr
	// Should the harness die, so does pg_recvlogical.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start pg_recvlogical: %w", err)
	}
	c.exited = make(chan struct{})
	c.done = make(chan struct{})
	go func() {
		c.exit = c.cmd.Wait()
		close(c.exited)
	}()
	go func() {
		defer close(c.done)
		defer f.Close()
		_ = c.stream.run(&tailReader{f: f, stop: c.exited, every: tailInterval}) // the stream keeps the error for wait and check
	}()
	if err := c.meter.addProc(c.cmd.Process.Pid, "pg_recvlogical", true); err != nil {
		return err
	}

	conn, err := pgx.Connect(ctx, c.e.srcURL)
	if err != nil {
		return fmt.Errorf("wait for pg_recvlogical: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = poll(ctx, 2*time.Millisecond, func() (bool, error) {
		select {
		case <-c.exited:
			return false, fmt.Errorf("pg_recvlogical exited (%v): %s", c.exit, strings.TrimSpace(c.stderr.String()))
		default:
		}
		return trackWalsender(ctx, conn, decodeSlot, c.e.src.Port(), &c.meter)
	})
	if err != nil {
		return fmt.Errorf("wait for pg_recvlogical: %w", err)
	}
	return nil
}

// wait waits for the marker in the stream and checks that exactly the
// stretch's changes came before it.
func (c *decode) wait(ctx context.Context, s stretch) (arrival, error) {
	m, err := c.stream.wait(ctx, s.marker)
	if err != nil {
		return arrival{}, fmt.Errorf("wait for marker %d: %w (pg_recvlogical: %s)", s.marker, err, strings.TrimSpace(c.stderr.String()))
	}
	if m.changes != s.changes {
		return arrival{}, fmt.Errorf("decoded %d row changes before marker %d, the workload committed %d", m.changes, s.marker, s.changes)
	}
	a := arrival{at: m.at, rows: m.changes}
	if s.lag {
		a.lags = rowLags(m.txns)
	}
	return a, nil
}

func (c *decode) usage() (usage, error) { return c.meter.sample() }

// check reports a stream that broke after the last marker; the changes
// themselves were counted by wait.
func (c *decode) check(context.Context) error {
	if err := c.stream.err(); err != nil {
		return fmt.Errorf("pgoutput stream: %w", err)
	}
	return nil
}

// close stops pg_recvlogical (SIGINT makes it send a last status and exit)
// and drops the slot.
func (c *decode) close(ctx context.Context) error {
	if c.e == nil {
		return nil
	}
	if c.exited != nil {
		c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-c.exited
		}
		<-c.done // the reader ends at the end of the file once the writer exited
	}
	return dropSlot(ctx, c.e.srcURL, decodeSlot)
}

// tailInterval is how long the harness waits before looking again when it
// has read all that pg_recvlogical wrote so far. It bounds how late the
// harness notices a message, which adds to decode's lag.
const tailInterval = 250 * time.Microsecond

// tailReader reads a file that another process is still writing: at the
// end of what is there it waits and tries again, until stop is closed (the
// writer exited) and the end is reached.
type tailReader struct {
	f     *os.File
	stop  <-chan struct{}
	every time.Duration
}

func (t *tailReader) Read(p []byte) (int, error) {
	for {
		stopped := false
		select {
		case <-t.stop:
			stopped = true // read once more: all it wrote is there now
		default:
		}
		n, err := t.f.Read(p)
		if n > 0 || (err != nil && !errors.Is(err, io.EOF)) || stopped {
			return n, err
		}
		// time.Sleep would sleep a whole millisecond (the Go timer's
		// resolution here); nanosleep keeps to the interval.
		ts := syscall.NsecToTimespec(t.every.Nanoseconds())
		syscall.Nanosleep(&ts, nil)
	}
}

// clientEnv is the harness's environment without libpq variables (PGHOST,
// PGPORT, …), so that a client tool connects where it is told.
func clientEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// lockedBuffer is a bytes.Buffer safe for a process writing to it while
// the harness reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
