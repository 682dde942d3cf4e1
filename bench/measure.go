package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// percentile returns the p-th percentile (0 ≤ p ≤ 100) of samples,
// interpolating linearly between the two nearest ranks, and false when there
// are no samples. samples is not modified.
func percentile(samples []time.Duration, p float64) (time.Duration, bool) {
	if len(samples) == 0 || math.IsNaN(p) {
		return 0, false
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	p = min(max(p, 0), 100)
	rank := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(rank))
	hi := int(math.Ceil(rank))
	frac := rank - float64(lo)
	return s[lo] + time.Duration(frac*float64(s[hi]-s[lo])), true
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ),
// which is 100 Hz on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// meter tracks what a contender consumes: the CPU of the processes doing
// its work, Postgres backends (walsender, apply worker, COPY backend)
// included; the peak RSS of its own processes (pg_recvlogical, later
// pgcourier); and the bytes on its connections between the nodes. It keeps
// the last reading of a process or connection, so one that has ended still
// counts with what it used. Safe for concurrent use.
type meter struct {
	mu    sync.Mutex
	procs []*proc
	conns map[connKey]int64 // last byte count of each tracked connection
}

// proc is one tracked process and its last reading.
type proc struct {
	pid   int
	label string
	own   bool   // a process of the contender's own, whose memory counts
	start string // start time from /proc/PID/stat, to notice a reused PID
	cpu   time.Duration
	peak  int64 // VmHWM in bytes
}

// usage is what a contender consumed so far.
type usage struct {
	// cpu is the CPU time (user + system) of every process doing the
	// contender's work, Postgres backends included.
	cpu time.Duration
	// cpuBy splits cpu by process label (walsender, apply worker, …).
	cpuBy map[string]time.Duration
	// peak holds the peak resident set size (VmHWM) in bytes of each of the
	// contender's own processes, by label. It is empty when all the work
	// happens inside Postgres backends.
	peak map[string]int64
	// wire is the bytes its connections between the nodes carried, both
	// ways.
	wire int64
}

// addProc starts tracking pid. own marks a process of the contender's own
// rather than a Postgres backend. Adding a tracked PID again does nothing.
func (m *meter) addProc(pid int, label string, own bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, q := range m.procs {
		if q.pid == pid {
			return nil
		}
	}
	st, err := readProcStat(pid)
	if err != nil {
		return fmt.Errorf("track %s (pid %d): %w", label, pid, err)
	}
	q := &proc{pid: pid, label: label, own: own, start: st.start, cpu: st.cpu}
	if own {
		q.peak, _ = readPeakRSS(pid)
	}
	m.procs = append(m.procs, q)
	return nil
}

// addConn starts tracking the loopback TCP connection from clientPort to
// serverPort: its payload bytes, both ways, count as wire bytes.
func (m *meter) addConn(serverPort, clientPort int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conns == nil {
		m.conns = map[connKey]int64{}
	}
	k := connKey{serverPort: serverPort, clientPort: clientPort}
	if _, ok := m.conns[k]; !ok {
		m.conns[k] = 0
	}
}

// sample reads every tracked process and connection that still exists and
// returns the sums.
func (m *meter) sample() (usage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := usage{peak: map[string]int64{}, cpuBy: map[string]time.Duration{}}
	for _, q := range m.procs {
		if st, err := readProcStat(q.pid); err == nil && st.start == q.start {
			q.cpu = st.cpu
			if q.own {
				if hwm, err := readPeakRSS(q.pid); err == nil {
					q.peak = max(q.peak, hwm)
				}
			}
		}
		u.cpu += q.cpu
		u.cpuBy[q.label] += q.cpu
		if q.own {
			u.peak[q.label] = max(u.peak[q.label], q.peak)
		}
	}
	if len(m.conns) > 0 {
		now, err := tcpBytes()
		if err != nil {
			return u, err
		}
		for k := range m.conns {
			if b, ok := now[k]; ok {
				m.conns[k] = b
			}
			u.wire += m.conns[k]
		}
	}
	return u, nil
}

// procStat is the part of /proc/PID/stat the harness reads.
type procStat struct {
	start string        // field 22, start time in clock ticks since boot
	cpu   time.Duration // fields 14 and 15, utime + stime
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command in parentheses may contain spaces; the fields after the
	// last ')' are plain. f[0] is field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return procStat{start: f[19], cpu: time.Duration(utime+stime) * clockTick}, nil
}

// readPeakRSS returns VmHWM of pid in bytes.
func readPeakRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmHWM %q", pid, v)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// loadAvg returns the machine's 1-minute load average, or 0 if unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// slotSpill returns how many bytes logical decoding spilled to disk for the
// replication slots that exist on the server at url.
func slotSpill(ctx context.Context, url string) (int64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, fmt.Errorf("read slot statistics: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int64
	err = conn.QueryRow(ctx, "SELECT coalesce(sum(spill_bytes), 0)::bigint FROM pg_stat_replication_slots").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("read slot statistics: %w", err)
	}
	return n, nil
}

// poll calls f every interval until it reports done, returns an error, or
// ctx ends.
func poll(ctx context.Context, interval time.Duration, f func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := f()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
