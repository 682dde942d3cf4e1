package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/apply"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/internal/schema"
	"github.com/pgcourier/pgcourier/router"
	"github.com/pgcourier/pgcourier/router/rest"
)

// The two ways upstream a route contender can take.
const (
	routeREST     = "rest"
	routePostgres = "postgres"
)

const (
	// serverNode is the id of the upstream node on the target: the REST
	// listener's, and the one the postgres route reads from the target's
	// pgcourier.node.
	serverNode = "bench-server"
	// serverChildEnv, when set, makes the bench binary (or the test binary)
	// run only a REST listener configured by the serverConfig in it, as
	// JSON, until SIGTERM. It prints "listening on HOST:PORT" on stdout
	// once it listens.
	serverChildEnv = "PGCOURIER_BENCH_SERVER"
	// applyAppName is the application_name of the applier's connections to
	// the target (the listener's, or the postgres route's through the
	// relay), by which the harness finds their backends.
	applyAppName = "pgcourier-bench-apply"
	// outboxAppName is the application_name capture.OpenOutbox gives the
	// router's connections to the outbox.
	outboxAppName = "pgcourier outbox"
	// listeningPrefix starts the line the listener prints once it listens.
	listeningPrefix = "listening on "
	// trackEvery is how often the harness looks for new backends of a
	// route contender while it waits for a marker (the applier connects on
	// demand).
	trackEvery = 100 * time.Millisecond
)

// route is one of pgcourier's routes as a whole: on the source, a client
// node in a process of its own (capture and a router with this one route,
// default options) ships the outbox through a relay, the link, to the
// target: to a REST listener in a second process (apply.Writer behind
// rest.Handler, served by rest.Server) or, for the postgres route, straight
// into the target's Postgres (apply.Route). The client runs from prepare
// on, so a backlog fills the outbox while the link is down; start brings
// the link up. Its CPU is that of its processes, the capture's walsender
// and the backends of its connections on both sides; its memory that of its
// processes; its wire bytes what the relay forwarded.
type route struct {
	kind string // routeREST or routePostgres

	e        *env
	src, dst *pgx.Conn // the harness's connections, to find backends
	relay    *relay
	client   *child // capture and router
	server   *child // the REST listener; nil for the postgres route
	meter    meter
	// committed counts the row changes and markers of the stretches
	// waited for: what capture has put in the outbox before the next one.
	committed int64
	tracked   time.Time // when backends were last looked for
}

var _ contender = (*route)(nil)

func (c *route) live() bool { return true }

// prepare sets up capture on the source, the pgcourier schema and the
// upstream node on the target, the listener (REST) and the relay, with the
// link down, and starts the client node; it returns once the capture
// streams.
func (c *route) prepare(ctx context.Context, e *env) error {
	c.e = e
	var err error
	if c.src, err = pgx.Connect(ctx, e.srcURL); err != nil {
		return fmt.Errorf("set up %s route: %w", c.kind, err)
	}
	if c.dst, err = pgx.Connect(ctx, e.dstURL); err != nil {
		return fmt.Errorf("set up %s route: %w", c.kind, err)
	}
	if err := setupCapture(ctx, c.src, e); err != nil {
		return err
	}
	if _, err := schema.Migrate(ctx, c.dst); err != nil {
		return fmt.Errorf("set up the upstream: %w", err)
	}
	if err := schema.Register(ctx, c.dst, serverNode, pgcourier.RoleServer); err != nil {
		return fmt.Errorf("set up the upstream: %w", err)
	}

	rc := routeConfig{Kind: c.kind}
	target := net.JoinHostPort(e.dst.Host(), strconv.Itoa(e.dst.Port()))
	if c.kind == routeREST {
		rc.Token = rand.Text()
		if target, err = c.startServer(ctx, rc.Token); err != nil {
			return err
		}
	}
	if c.relay, err = startRelay(target); err != nil {
		return fmt.Errorf("start the relay: %w", err)
	}
	switch c.kind {
	case routeREST:
		rc.URL = "http://" + c.relay.addr()
	case routePostgres:
		rc.URL = appURL(fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", c.relay.addr(), url.PathEscape(dbName)), applyAppName)
	}

	cfg, err := newCaptureConfig(e)
	if err != nil {
		return fmt.Errorf("start the client node: %w", err)
	}
	cfg.Route = &rc
	if c.client, err = startChild("pgcourier client", captureChildEnv, cfg); err != nil {
		return err
	}
	if err := c.meter.addProc(c.client.pid(), "pgcourier client", true); err != nil {
		return err
	}
	err = poll(ctx, 2*time.Millisecond, func() (bool, error) {
		if err := c.alive(); err != nil {
			return false, err
		}
		return trackCapture(ctx, c.src, &c.meter)
	})
	if err != nil {
		return fmt.Errorf("wait for the capture to stream: %w", err)
	}
	return c.track(ctx)
}

// startServer starts the REST listener on the target, accepting the
// capture's source with token, and returns its address once it listens.
func (c *route) startServer(ctx context.Context, token string) (string, error) {
	sum := sha256.Sum256([]byte(token))
	cfg := serverConfig{
		Database:    appURL(c.e.dstURL, applyAppName),
		Source:      captureNode,
		TokenSHA256: hex.EncodeToString(sum[:]),
	}
	if c.e.cpuProfile != "" {
		cfg.CPUProfile = strings.TrimSuffix(c.e.cpuProfile, ".pprof") + "-server.pprof"
	}
	var err error
	if c.server, err = startChild("pgcourier server", serverChildEnv, cfg); err != nil {
		return "", err
	}
	if err := c.meter.addProc(c.server.pid(), "pgcourier server", true); err != nil {
		return "", err
	}
	var addr string
	err = poll(ctx, 2*time.Millisecond, func() (bool, error) {
		if err := c.server.err(); err != nil {
			return false, err
		}
		out := c.server.stdout.String()
		i := strings.Index(out, listeningPrefix)
		j := strings.IndexByte(out[max(i, 0):], '\n')
		if i < 0 || j < 0 {
			return false, nil
		}
		addr = out[i+len(listeningPrefix) : i+j]
		return true, nil
	})
	if err != nil {
		return "", fmt.Errorf("wait for the listener: %w", err)
	}
	return addr, nil
}

// appURL returns the connection URL u with application_name set to name.
func appURL(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	q := p.Query()
	q.Set("application_name", name)
	p.RawQuery = q.Encode()
	return p.String()
}

// alive reports a process of the contender's that has exited.
func (c *route) alive() error {
	for _, p := range []*child{c.client, c.server} {
		if p != nil {
			if err := p.err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// track adds the backends of the contender's connections on both sides
// that the meter does not know yet: the capture's and the router's on the
// source, the applier's on the target, which connect on demand.
func (c *route) track(ctx context.Context) error {
	c.tracked = time.Now()
	if err := trackBackends(ctx, c.src, &c.meter, "backend", captureAppName, outboxAppName); err != nil {
		return fmt.Errorf("find backends: %w", err)
	}
	if err := trackBackends(ctx, c.dst, &c.meter, "apply backend", applyAppName); err != nil {
		return fmt.Errorf("find backends: %w", err)
	}
	return nil
}

// filled returns once the outbox holds every change of the stretch and its
// marker: the backlog is captured and waits for the link.
func (c *route) filled(ctx context.Context, s stretch) error {
	want := c.committed + s.changes + 1
	var got int64
	err := poll(ctx, 5*time.Millisecond, func() (bool, error) {
		if err := c.alive(); err != nil {
			return false, err
		}
		err := c.src.QueryRow(ctx, "SELECT coalesce(sum(rows), 0) FROM pgcourier.outbox").Scan(&got)
		return got >= want, err
	})
	if err != nil {
		return fmt.Errorf("wait for %d changes in the outbox (%d there): %w", want, got, err)
	}
	return nil
}

// start brings the link up and returns once the receiver has answered the
// route through it: the router probes an unreachable route every second or
// so, and uses it at once when a probe gets through.
func (c *route) start(ctx context.Context) error {
	c.relay.linkUp()
	err := poll(ctx, time.Millisecond, func() (bool, error) {
		if err := c.alive(); err != nil {
			return false, err
		}
		return c.relay.answered(), nil
	})
	if err != nil {
		fwd, refused := c.relay.connections()
		return fmt.Errorf("wait for the route to reach its receiver (the relay closed %d connections while down, forwarded %d since): %w", refused, fwd, err)
	}
	return c.track(ctx)
}

// wait waits for the marker on the target, as native's wait does, then
// reads the lags and the first row the stretch asks for.
func (c *route) wait(ctx context.Context, s stretch) (arrival, error) {
	at, err := c.e.waitMarker(ctx, s.marker, func() error {
		if err := c.alive(); err != nil {
			return err
		}
		if time.Since(c.tracked) >= trackEvery {
			return c.track(ctx)
		}
		return nil
	})
	if err != nil {
		return arrival{}, err
	}
	c.committed += s.changes + 1
	if err := c.track(ctx); err != nil {
		return arrival{}, err
	}
	return c.e.arrived(ctx, s, at)
}

// usage reads the processes; the wire bytes are those the relay forwarded.
func (c *route) usage() (usage, error) {
	u, err := c.meter.sample()
	if c.relay != nil {
		u.wire = c.relay.bytes()
	}
	return u, err
}

func (c *route) check(ctx context.Context) error {
	if err := c.alive(); err != nil {
		return err
	}
	return c.e.check(ctx)
}

// close stops the client node, then the listener and the relay, and drops
// the capture's slot.
func (c *route) close(ctx context.Context) error {
	if c.e == nil {
		return nil
	}
	for _, p := range []*child{c.client, c.server} {
		if p != nil {
			p.stop()
		}
	}
	if c.relay != nil {
		c.relay.close()
	}
	for _, conn := range []*pgx.Conn{c.src, c.dst} {
		if conn != nil {
			conn.Close(ctx)
		}
	}
	return dropSlot(ctx, c.e.srcURL, captureSlot)
}

// routeConfig is the one route of a client node, as the harness tells the
// client process.
type routeConfig struct {
	Kind string `json:"kind"` // routeREST or routePostgres
	// URL is the REST listener's base URL, or the target database's
	// connection URL: both lead through the relay.
	URL   string `json:"url"`
	Token string `json:"token,omitempty"` // the REST route's bearer token
}

// runClientNode runs capture and a router shipping its outbox along rc,
// wired as "pgcourier run" wires a client node, until ctx is done.
func runClientNode(ctx context.Context, opts capture.Options, rc routeConfig, log *slog.Logger) error {
	ob, err := capture.OpenOutbox(ctx, opts.Database, opts.Node)
	if err != nil {
		return err
	}
	defer ob.Close()
	name := "route[0] " + rc.Kind
	rlog := log.With("route", name)
	var sink pgcourier.Sink
	target := rc.URL
	switch rc.Kind {
	case routeREST:
		if sink, err = rest.NewClient(rest.ClientOptions{URL: rc.URL, Token: rc.Token, Logger: rlog}); err != nil {
			return err
		}
	case routePostgres:
		pc, err := pgx.ParseConfig(rc.URL)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		pc.ConnectTimeout = 10 * time.Second
		rt, err := apply.NewRoute(pc, apply.Options{Logger: rlog})
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer rt.Close()
		sink = rt
		target = pc.Host + ":" + strconv.Itoa(int(pc.Port))
	default:
		return fmt.Errorf("%s: unknown kind of route", name)
	}
	r, err := router.New(router.Options{
		Source: opts.Node,
		Outbox: ob,
		Routes: []router.Route{{Name: name, Target: target, Sink: sink}},
		Logger: log.With("part", "router"),
	})
	if err != nil {
		return err
	}
	opts.Appended = r.Wake
	cp, err := capture.New(opts)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(gctx) })
	g.Go(func() error { return cp.Run(gctx) })
	return g.Wait()
}

// serverConfig is what the harness tells the listener process.
type serverConfig struct {
	Database    string `json:"database"` // the target database
	Source      string `json:"source"`   // the one node allowed to send
	TokenSHA256 string `json:"token_sha256"`
	CPUProfile  string `json:"cpu_profile,omitempty"`
}

// runServerChild runs the upstream node's REST listener configured by cfg
// (serverConfig as JSON), wired as "pgcourier run" wires a listener, on a
// free port of 127.0.0.1, until SIGTERM or SIGINT. It prints the address on
// stdout once it listens, and logs warnings and errors to stderr. It
// returns the process's exit code.
func runServerChild(cfg string) int {
	var c serverConfig
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		fmt.Fprintf(os.Stderr, "server: %s: %v\n", serverChildEnv, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	stopProfile, err := startProfile(c.CPUProfile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		return 1
	}
	defer stopProfile()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := serve(ctx, c, log); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "server:", err)
		return 1
	}
	return 0
}

// serve runs the listener until ctx is done.
func serve(ctx context.Context, c serverConfig, log *slog.Logger) error {
	pc, err := pgx.ParseConfig(c.Database)
	if err != nil {
		return err
	}
	w, err := apply.New(pc, apply.Options{Node: serverNode, Logger: log.With("part", "apply")})
	if err != nil {
		return err
	}
	defer w.Close()
	sum, err := rest.ParseTokenHash(c.TokenSHA256)
	if err != nil {
		return err
	}
	h, err := rest.NewHandler(rest.HandlerOptions{
		Node:    serverNode,
		Sources: map[string][32]byte{c.Source: sum},
		Sink:    w,
		Logger:  log.With("part", "listen"),
	})
	if err != nil {
		return err
	}
	ln, err := rest.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("%s%s\n", listeningPrefix, ln.Addr())
	srv := &rest.Server{Addr: ln.Addr().String(), Handler: h, Logger: log.With("part", "listen")}
	return srv.Serve(ctx, ln)
}
