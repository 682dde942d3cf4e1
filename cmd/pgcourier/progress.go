package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/pgcourier/pgcourier/capture"
)

// barHandler draws capture's snapshot progress records as a bar on one
// terminal line, redrawn in place, and hands every other record at or above
// its level to the handler below it, after ending the bar's line.
type barHandler struct {
	next  slog.Handler
	level slog.Leveler
	bar   *bar
}

// bar is the terminal line the progress is drawn on, shared by the
// handlers derived from one barHandler.
type bar struct {
	mu    sync.Mutex
	w     io.Writer
	drawn bool // the line holds a bar, with no newline after it
}

// newBarHandler returns a handler drawing progress bars on w, which next
// also writes to, and passing the other records from level up to next.
func newBarHandler(w io.Writer, next slog.Handler, level slog.Leveler) *barHandler {
	return &barHandler{next: next, level: level, bar: &bar{w: w}}
}

// Enabled lets progress records through at every level.
func (h *barHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *barHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == capture.ProgressMessage {
		h.bar.draw(r)
		return nil
	}
	if r.Level < h.level.Level() {
		return nil
	}
	h.bar.mu.Lock()
	defer h.bar.mu.Unlock()
	if h.bar.drawn {
		fmt.Fprintln(h.bar.w)
		h.bar.drawn = false
	}
	return h.next.Handle(ctx, r)
}

func (h *barHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &barHandler{next: h.next.WithAttrs(as), level: h.level, bar: h.bar}
}

func (h *barHandler) WithGroup(name string) slog.Handler {
	return &barHandler{next: h.next.WithGroup(name), level: h.level, bar: h.bar}
}

// barWidth is the number of cells of a bar.
const barWidth = 30

// draw redraws the line with the progress r reports.
func (b *bar) draw(r slog.Record) {
	var table string
	var done, estimate, rate int64
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "table":
			table = a.Value.String()
		case "rows_done":
			done = a.Value.Int64()
		case "rows_estimate":
			estimate = a.Value.Int64()
		case "rows_per_s":
			rate = a.Value.Int64()
		}
		return true
	})
	line := fmt.Sprintf("snapshot of %s: %s rows, %s rows/s", table, thousands(done), thousands(rate))
	if estimate > 0 {
		frac := min(float64(done)/float64(estimate), 1)
		cells := int(frac * barWidth)
		line = fmt.Sprintf("snapshot of %s [%s%s] %3.0f%%  %s of about %s rows, %s rows/s",
			table, strings.Repeat("#", cells), strings.Repeat("-", barWidth-cells), frac*100, thousands(done), thousands(estimate), thousands(rate))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(b.w, "\r%s\033[K", line)
	b.drawn = true
}

// thousands formats n with thousands separators, such as "12,345".
func thousands(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
