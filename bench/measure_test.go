package main

import (
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...float64) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x*float64(time.Millisecond)))
		}
		return out
	}
	var hundred []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		hundred = append(hundred, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"single", ms(7), 50, 7 * time.Millisecond},
		{"single p99", ms(7), 99, 7 * time.Millisecond},
		{"odd median", ms(5, 1, 3), 50, 3 * time.Millisecond},
		{"even median interpolates", ms(1, 2, 3, 4), 50, 2500 * time.Microsecond},
		{"p0 is the minimum", ms(4, 2, 9), 0, 2 * time.Millisecond},
		{"p100 is the maximum", ms(4, 2, 9), 100, 9 * time.Millisecond},
		{"p99 of 1..100 ms", hundred, 99, 99010 * time.Microsecond},
		{"p50 of 1..100 ms", hundred, 50, 50500 * time.Microsecond},
		{"p above 100 clamps", ms(1, 2), 150, 2 * time.Millisecond},
		{"negative p clamps", ms(1, 2), -5, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := slices.Clone(tc.samples)
			got, ok := percentile(tc.samples, tc.p)
			if !ok || got != tc.want {
				t.Errorf("percentile(%v, %v) = %v, %v, want %v, true", tc.samples, tc.p, got, ok, tc.want)
			}
			if !slices.Equal(before, tc.samples) {
				t.Errorf("percentile reordered its input")
			}
		})
	}
	if got, ok := percentile(nil, 50); ok {
		t.Errorf("percentile(nil, 50) = %v, true, want false", got)
	}
}

// sink keeps the busy loop of TestMeter from being optimized away.
var sink int

func TestMeter(t *testing.T) {
	var m meter
	if err := m.addProc(os.Getpid(), "bench", true); err != nil {
		t.Fatal(err)
	}
	if err := m.addProc(os.Getpid(), "again", true); err != nil {
		t.Fatal(err)
	}
	if len(m.procs) != 1 {
		t.Errorf("tracking %d processes after adding this one twice, want 1", len(m.procs))
	}
	// Burn CPU until the reading moves: a tick is 10ms of CPU, which on a
	// busy machine can take a while to get.
	u0, err := m.sample()
	if err != nil {
		t.Fatal(err)
	}
	u1 := u0
	for deadline := time.Now().Add(10 * time.Second); u1.cpu <= u0.cpu && time.Now().Before(deadline); u1, _ = m.sample() {
		for range 1_000_000 {
			sink++
		}
	}
	if u1.cpu <= u0.cpu {
		t.Errorf("cpu stayed at %v after 10s of work", u1.cpu)
	}
	if u1.peak["bench"] < 1<<20 {
		t.Errorf("peak RSS of this process = %d bytes, want at least 1 MiB", u1.peak["bench"])
	}
	if err := m.addProc(1<<30, "none", false); err == nil {
		t.Error("tracking a process that does not exist succeeded")
	}
}

func TestMeterWire(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b := make([]byte, 1000)
		n, _ := io.ReadFull(c, b)
		c.Write([]byte("thanks")) // 6 bytes back
		got <- b[:n]
		io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var m meter
	m.addConn(ln.Addr().(*net.TCPAddr).Port, c.LocalAddr().(*net.TCPAddr).Port)
	if _, err := c.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if b := <-got; len(b) != 1000 {
		t.Fatalf("server read %d bytes, want 1000", len(b))
	}
	if _, err := io.ReadFull(c, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	// The server's socket received 1000 bytes and sent 6, acknowledged as
	// soon as they arrived; allow the acknowledgement a moment.
	var u usage
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if u, err = m.sample(); err != nil {
			t.Fatal(err)
		}
		if u.wire == 1006 {
			break
		}
	}
	if u.wire != 1006 {
		t.Errorf("wire bytes = %d, want 1006", u.wire)
	}
}
