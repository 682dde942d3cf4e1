package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/apply"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/schema"
	"github.com/pgcourier/pgcourier/router"
	"github.com/pgcourier/pgcourier/router/rest"
)

// runRun runs the node's role until SIGINT or SIGTERM.
func runRun(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg, _, code := configFlags("run", args, stderr, nil)
	if cfg == nil {
		return code
	}
	log := newLogger(cfg.Log, stderr)
	if err := runNode(ctx, cfg, log); err != nil {
		log.Error("pgcourier stopped", "err", err)
		return exitFail
	}
	return exitOK
}

// newLogger returns the logger the configuration asks for, writing to w.
func newLogger(lc config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(lc.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if lc.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	if isTerminal(w) {
		// Someone is watching: snapshot progress as a bar. The bar handler
		// applies the level itself, as progress comes at every level.
		return slog.New(newBarHandler(w, slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}), level))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runNode runs everything cfg's node does, until ctx is done (then it
// returns nil) or a part fails in a way retrying cannot heal.
//
//   - capture, on a node with [capture]: local changes into the outbox;
//   - the router, on a capturing node with routes: the outbox upstream;
//   - the listener, on a node with [listen]: batches from below, applied
//     to the node's database.
func runNode(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	log = log.With("node", cfg.Node)
	dsn, err := cfg.Database.ConnString()
	if err != nil {
		return err
	}
	if err := prepareRun(ctx, cfg); err != nil {
		return err
	}
	if cfg.Role == pgcourier.RoleMiddleman {
		return errors.New("the middleman role is not supported by this version of pgcourier yet")
	}

	// Build every part first, so that a part that cannot be built leaves
	// nothing running; then run them all.
	var parts []func(context.Context) error
	var wake func()
	if cfg.Capture != nil && len(cfg.Routes) > 0 {
		r, closeRoutes, err := newRouter(ctx, cfg, dsn, log)
		if err != nil {
			return err
		}
		defer closeRoutes()
		wake = r.Wake
		parts = append(parts, r.Run)
	}
	if cfg.Capture != nil {
		c, err := capture.New(capture.Options{
			Node:        cfg.Node,
			Database:    dsn,
			Slot:        cfg.Capture.Slot,
			Publication: cfg.Capture.Publication,
			Tables:      pgcourier.TableFilter{Include: cfg.Capture.Tables, Exclude: cfg.Capture.Exclude},
			Appended:    wake,
			Logger:      log.With("part", "capture"),
		})
		if err != nil {
			return err
		}
		parts = append(parts, c.Run)
	}
	if cfg.Listen != nil {
		srv, closeWriter, err := newListener(cfg, dsn, log)
		if err != nil {
			return err
		}
		defer closeWriter()
		parts = append(parts, srv.Run)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, run := range parts {
		g.Go(func() error { return run(gctx) })
	}
	if cfg.Capture != nil && len(cfg.Routes) == 0 {
		log.Warn("capturing with no [[route]]: this node's own changes wait in its outbox until a route is configured")
	}
	if cfg.Role == pgcourier.RoleServer && len(cfg.Routes) > 0 {
		log.Warn("forwarding batches from other sources upstream is not supported yet; only this node's own edits are shipped")
	}
	log.Info("pgcourier running", "role", cfg.Role, "version", versionString())
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		log.Info("pgcourier stopped")
	}
	return err
}

// prepareRun checks the node's database before run starts anything, and
// records the conflict policy of an applying node, which the postgres
// routes from below apply with.
func prepareRun(ctx context.Context, cfg *config.Config) error {
	conn, err := connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := checkSchema(ctx, conn, cfg); err != nil {
		return err
	}
	if cfg.Role.Applies() {
		return schema.RecordPolicy(ctx, conn, cfg.Apply.Conflict)
	}
	return nil
}

// checkSchema refuses a database "pgcourier init" has not prepared for
// this node, or prepared for another version.
func checkSchema(ctx context.Context, conn *pgx.Conn, cfg *config.Config) error {
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return err
	}
	if v != schema.Latest() {
		return fmt.Errorf("the pgcourier schema in the node's database is at version %d, this pgcourier needs %d: run \"pgcourier init -c %s\"",
			v, schema.Latest(), cfg.File())
	}
	var owner string
	if err := conn.QueryRow(ctx, `SELECT id FROM pgcourier.node`).Scan(&owner); err != nil {
		return fmt.Errorf("read the node's id from its database: %w; run \"pgcourier init -c %s\"", err, cfg.File())
	}
	if owner != cfg.Node {
		return fmt.Errorf("%w: the database belongs to node %q, this config is node %q", schema.ErrOtherNode, owner, cfg.Node)
	}
	return nil
}

// newRouter wires the node's outbox and routes into a router. The returned
// func closes what it opened.
func newRouter(ctx context.Context, cfg *config.Config, dsn string, log *slog.Logger) (*router.Router, func(), error) {
	ob, err := capture.OpenOutbox(ctx, dsn, cfg.Node)
	if err != nil {
		return nil, nil, err
	}
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
		ob.Close()
	}
	var routes []router.Route
	for i, rc := range cfg.Routes {
		name := routeName(i, rc)
		sink, closeSink, err := newSink(cfg, rc, log.With("route", name))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		closers = append(closers, closeSink)
		routes = append(routes, router.Route{Name: name, Target: redactURL(rc.URL), Sink: sink})
	}
	r, err := router.New(router.Options{
		Source:    cfg.Node,
		Outbox:    ob,
		Routes:    routes,
		Retention: cfg.Capture.RetentionPeriod(),
		Logger:    log.With("part", "router"),
	})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return r, closeAll, nil
}

// routeName names route i for logs and status, such as "route[0] rest".
func routeName(i int, rc config.Route) string { return fmt.Sprintf("route[%d] %s", i, rc.Kind) }

// newSink returns the transport of route rc and a func that closes it.
func newSink(cfg *config.Config, rc config.Route, log *slog.Logger) (pgcourier.Sink, func(), error) {
	switch rc.Kind {
	case config.RouteREST:
		token, err := rc.Token()
		if err != nil {
			return nil, nil, err
		}
		c, err := rest.NewClient(rest.ClientOptions{URL: rc.URL, Token: token, Logger: log})
		if err != nil {
			return nil, nil, err
		}
		return c, func() {}, nil
	case config.RoutePostgres:
		route, err := newPostgresRoute(cfg, rc, log)
		if err != nil {
			return nil, nil, err
		}
		return route, route.Close, nil
	}
	return nil, nil, fmt.Errorf("the %s route is not supported by this version of pgcourier yet", rc.Kind)
}

// newPostgresRoute returns the direct route into an upstream database.
func newPostgresRoute(cfg *config.Config, rc config.Route, log *slog.Logger) (*apply.Route, error) {
	dsn, err := rc.ConnString()
	if err != nil {
		return nil, err
	}
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if pc.ConnectTimeout == 0 || pc.ConnectTimeout > connectTimeout {
		pc.ConnectTimeout = connectTimeout
	}
	pc.RuntimeParams["application_name"] = "pgcourier " + cfg.Node
	return apply.NewRoute(pc, apply.Options{Logger: log})
}

// newListener wires the node's applier behind its REST listener. The
// returned func closes the applier.
func newListener(cfg *config.Config, dsn string, log *slog.Logger) (*rest.Server, func(), error) {
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("database url: %w", err)
	}
	pc.RuntimeParams["application_name"] = "pgcourier apply"
	w, err := apply.New(pc, apply.Options{
		Node:   cfg.Node,
		Policy: apply.Policy(cfg.Apply.Conflict),
		Logger: log.With("part", "apply"),
	})
	if err != nil {
		return nil, nil, err
	}
	sources := map[string][32]byte{}
	for i, s := range cfg.Listen.Sources {
		h, err := rest.ParseTokenHash(s.TokenSHA256)
		if err != nil {
			w.Close()
			return nil, nil, fmt.Errorf("listen.source[%d].token-sha256: %w", i, err)
		}
		sources[s.Node] = h
	}
	h, err := rest.NewHandler(rest.HandlerOptions{
		Node:         cfg.Node,
		Sources:      sources,
		Sink:         w,
		MaxBodyBytes: cfg.Listen.MaxBodyBytes,
		Logger:       log.With("part", "listen"),
	})
	if err != nil {
		w.Close()
		return nil, nil, err
	}
	srv := &rest.Server{
		Addr:    cfg.Listen.Addr,
		TLSCert: cfg.Listen.TLSCert,
		TLSKey:  cfg.Listen.TLSKey,
		Handler: h,
		Logger:  log.With("part", "listen"),
	}
	return srv, w.Close, nil
}

// redactURL returns u without a password, for logs and status.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return "(unparsable url)"
	}
	return p.Redacted()
}
