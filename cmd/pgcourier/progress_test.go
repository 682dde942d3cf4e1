package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/pgcourier/pgcourier/capture"
)

func TestBarHandler(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(newBarHandler(&out, slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}), slog.LevelInfo)).With("node", "laptop-07")
	ctx := context.Background()
	log.Log(ctx, slog.LevelDebug, capture.ProgressMessage, "table", "public.visit", "rows_done", int64(45_000), "rows_estimate", int64(100_000), "rows_per_s", int64(12_345))
	log.Log(ctx, slog.LevelInfo, capture.ProgressMessage, "table", "public.visit", "rows_done", int64(90_000), "rows_estimate", int64(100_000), "rows_per_s", int64(12_000))
	log.Debug("batch captured", "seq", 7)
	log.Info("snapshot finished", "table", "public.visit")
	log.Log(ctx, slog.LevelDebug, capture.ProgressMessage, "table", "public.consent", "rows_done", int64(10), "rows_estimate", int64(0), "rows_per_s", int64(5))

	got := out.String()
	for _, want := range []string{
		"\rsnapshot of public.visit [#############-----------------]  45%  45,000 of about 100,000 rows, 12,345 rows/s\033[K",
		"\rsnapshot of public.visit [###########################---]  90%  90,000 of about 100,000 rows, 12,000 rows/s\033[K\n",
		"msg=\"snapshot finished\" node=laptop-07 table=public.visit\n",
		"\rsnapshot of public.consent: 10 rows, 5 rows/s\033[K",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q; it is:\n%q", want, got)
		}
	}
	if strings.Contains(got, "batch captured") {
		t.Errorf("a Debug record below the level passed: %q", got)
	}
	if strings.Contains(got, "msg=\"snapshot progress\"") {
		t.Errorf("a progress record was logged as a line: %q", got)
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
