package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/doctor"
)

// runDoctor checks the node's database and prints one line per check, with
// the fix under every failed one. Exit 0 when all pass, 1 when any failed.
func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, _, code := configFlags("doctor", args, stderr, nil)
	if cfg == nil {
		return code
	}
	checks := configChecks(cfg)
	checks = append(checks, routeChecks(ctx, cfg)...)
	conn, err := connect(ctx, cfg)
	if err != nil {
		checks = append(checks, doctor.Check{Name: "database", Detail: err.Error(), Fix: "start Postgres, or correct [database] url"})
		printChecks(stdout, checks)
		return exitFail
	}
	defer conn.Close(context.WithoutCancel(ctx))

	opts := doctor.Options{Role: cfg.Role}
	if c := cfg.Capture; c != nil {
		opts.Capture = true
		opts.Tables = pgcourier.TableFilter{Include: c.Tables, Exclude: c.Exclude}
		opts.Slot = c.Slot
	}
	dbChecks, err := doctor.Run(ctx, conn, opts)
	checks = append(checks, dbChecks...)
	printChecks(stdout, checks)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier doctor: %v\n", err)
		return exitFail
	}
	if doctor.Failed(checks) {
		return exitFail
	}
	return exitOK
}

// configChecks checks what the configuration names outside the database:
// every route's token can be read.
func configChecks(cfg *config.Config) []doctor.Check {
	var checks []doctor.Check
	for i, r := range cfg.Routes {
		if r.Kind != "rest" {
			continue
		}
		c := doctor.Check{Name: fmt.Sprintf("route[%d] token", i), OK: true, Detail: "readable"}
		if _, err := r.Token(); err != nil {
			c.OK, c.Detail = false, err.Error()
			c.Fix = "put the token for " + cfg.Node + " in that file (pgcourier token --node " + cfg.Node + " makes one)"
		}
		checks = append(checks, c)
	}
	return checks
}

// routeTimeout bounds the check of one route.
const routeTimeout = 10 * time.Second

// routeChecks asks every route's upstream where this node's stream stands,
// as the router's probe does. An upstream out of reach passes (a laptop is
// often offline); one that refuses the node fails, with the fix.
func routeChecks(ctx context.Context, cfg *config.Config) []doctor.Check {
	if cfg.Capture == nil {
		return nil
	}
	var checks []doctor.Check
	for i, rc := range cfg.Routes {
		c := doctor.Check{Name: routeName(i, rc) + " " + redactURL(rc.URL), OK: true}
		sink, closeSink, err := newSink(cfg, rc, slog.New(slog.DiscardHandler))
		if err != nil {
			c.OK, c.Detail = false, err.Error()
			checks = append(checks, c)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, routeTimeout)
		p, err := sink.Progress(rctx, cfg.Node)
		cancel()
		closeSink()
		switch {
		case err == nil && p.AppliedSeq == 0:
			c.Detail = "reached; nothing from " + cfg.Node + " applied there yet"
		case err == nil:
			c.Detail = fmt.Sprintf("reached; %s applied up to seq %d (epoch %d) there", cfg.Node, p.AppliedSeq, p.Epoch)
		case errors.Is(err, pgcourier.ErrUnreachable):
			c.Detail = "out of reach now, which is fine while offline: " + err.Error()
		default:
			c.OK, c.Detail = false, err.Error()
			c.Fix = "check the route's url and token (or password) here, and " + cfg.Node + "'s [[listen.source]] lines upstream (pgcourier token --node " + cfg.Node + ")"
		}
		checks = append(checks, c)
	}
	return checks
}

func printChecks(w io.Writer, checks []doctor.Check) {
	for _, c := range checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s: %s\n", mark, c.Name, c.Detail)
		if !c.OK && c.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", c.Fix)
		}
	}
}
