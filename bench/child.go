package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// childStopWait is how long a child process has to stop after SIGTERM
// before the harness kills it.
const childStopWait = 5 * time.Second

// runChild runs this process as one of the harness's child processes when
// its environment asks for one (see startChild), and reports whether it did,
// with the exit code. Both main and the test binary's TestMain call it
// first.
func runChild() (int, bool) {
	if cfg, ok := os.LookupEnv(captureChildEnv); ok {
		return runCaptureChild(cfg), true
	}
	if cfg, ok := os.LookupEnv(serverChildEnv); ok {
		return runServerChild(cfg), true
	}
	return 0, false
}

// child is a process of pgcourier's that the harness runs: the bench binary
// itself (or the test binary) started again with a child mode's variable in
// its environment, holding the process's configuration as JSON. The
// harness meters it like any other process of a contender's.
type child struct {
	name   string // for errors, such as "pgcourier client"
	cmd    *exec.Cmd
	stdout lockedBuffer
	stderr lockedBuffer
	exited chan struct{} // closed once the process exited
	exit   error         // its exit status, readable after exited
}

// startChild starts the bench binary as child name, with env=cfg (as JSON)
// in its environment. The process dies with the harness.
func startChild(name, env string, cfg any) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, exited: make(chan struct{})}
	c.cmd = exec.Command(exe)
	c.cmd.Env = append(clientEnv(), env+"="+string(js))
	c.cmd.Stdout = &c.stdout
	c.cmd.Stderr = &c.stderr
	// Should the harness die, so does the child.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.exit = c.cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// err reports a child that has exited, with what it said on stderr; nil
// while it runs.
func (c *child) err() error {
	select {
	case <-c.exited:
		return fmt.Errorf("%s exited (%v): %s", c.name, c.exit, strings.TrimSpace(c.stderr.String()))
	default:
		return nil
	}
}

// stop sends the child SIGTERM and waits for it to exit, killing it after
// childStopWait. It does nothing to a child that has exited.
func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(childStopWait):
		c.cmd.Process.Kill()
		<-c.exited
	}
}
