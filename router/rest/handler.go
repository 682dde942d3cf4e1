package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pgcourier/pgcourier"
)

// HandlerOptions configures a Handler.
type HandlerOptions struct {
	// Node is the receiving node's id. Batches whose source is Node are
	// refused: a node never receives its own batches.
	Node string
	// Sources maps each node allowed to send batches to the SHA-256 of its
	// token (see ParseTokenHash). A token only speaks for its own node.
	Sources map[string][32]byte
	// Sink is where accepted batches go: the applier, or a relay's store.
	Sink pgcourier.Sink
	// MaxBodyBytes is the largest request body accepted, both as sent and
	// once decompressed; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Logger receives the handler's log records; nil discards them.
	Logger *slog.Logger
}

// Handler serves the upload protocol for a receiving node: it authenticates
// each request, checks every batch it carries, and hands the batches to its
// Sink. A request it refuses changes nothing. Handler implements
// http.Handler and is safe for concurrent use; it runs the deliveries of one
// source one at a time, as pgcourier.Sink requires.
type Handler struct {
	node    string
	tokens  tokens
	lanes   map[string]*lane // by source; read-only after NewHandler
	sink    pgcourier.Sink
	maxBody int64
	log     *slog.Logger

	// An upload that reached the sink before an earlier one of its source
	// waits up to gapWait for that one, at most gapRetries times.
	gapWait    time.Duration
	gapRetries int
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns a Handler for opts. It returns an error if opts.Node or
// a source is not a valid node id, a source is opts.Node, two sources share
// a token, opts.Sink is nil or opts.MaxBodyBytes is negative.
func NewHandler(opts HandlerOptions) (*Handler, error) {
	if err := pgcourier.CheckNodeID(opts.Node); err != nil {
		return nil, fmt.Errorf("rest handler: node: %w", err)
	}
	if opts.Sink == nil {
		return nil, errors.New("rest handler: no sink")
	}
	if opts.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("rest handler: max body bytes %d: want 0 (the default) or more", opts.MaxBodyBytes)
	}
	h := &Handler{
		node:       opts.Node,
		lanes:      make(map[string]*lane, len(opts.Sources)),
		sink:       opts.Sink,
		maxBody:    opts.MaxBodyBytes,
		log:        opts.Logger,
		gapWait:    2 * time.Second,
		gapRetries: 3,
	}
	if h.maxBody == 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	owner := make(map[[32]byte]string, len(opts.Sources))
	for node, sum := range opts.Sources {
		if err := pgcourier.CheckNodeID(node); err != nil {
			return nil, fmt.Errorf("rest handler: source: %w", err)
		}
		if node == opts.Node {
			return nil, fmt.Errorf("rest handler: source %s is the node itself: a node never receives its own batches", node)
		}
		if other, ok := owner[sum]; ok {
			a, b := min(node, other), max(node, other)
			return nil, fmt.Errorf("rest handler: sources %s and %s have the same token: give each node its own (\"pgcourier token --node ID\")", a, b)
		}
		owner[sum] = node
		h.tokens.nodes = append(h.tokens.nodes, node)
		h.tokens.hashes = append(h.tokens.hashes, sum)
		h.lanes[node] = newLane()
	}
	return h, nil
}

// ServeHTTP answers one request of the protocol.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	if path == healthPath {
		h.health(w, r)
		return
	}
	if rest, ok := strings.CutPrefix(path, sourcesPrefix); ok {
		parts := strings.Split(rest, "/")
		switch {
		case len(parts) == 3 && parts[1] == "batches":
			h.upload(w, r, unescape(parts[0]), unescape(parts[2]))
			return
		case len(parts) == 2 && parts[1] == "progress":
			h.progress(w, r, unescape(parts[0]))
			return
		}
	}
	h.fail(w, r, &refusal{http.StatusNotFound, "no such resource: see docs/rest.md for the paths this node serves"})
}

// health answers GET /healthz: the node is up. It needs no token and
// touches no database.
func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet, http.MethodHead) {
		h.fail(w, r, errMethod(r, "GET or HEAD"))
		return
	}
	writeJSON(w, http.StatusOK, healthBody{Status: "ok", Node: h.node})
}

// progress answers GET /v1/sources/{source}/progress.
func (h *Handler) progress(w http.ResponseWriter, r *http.Request, source string) {
	if !allowMethod(w, r, http.MethodGet) {
		h.fail(w, r, errMethod(r, "GET"))
		return
	}
	if ref := h.authorize(w, r, source); ref != nil {
		h.fail(w, r, ref)
		return
	}
	p, err := h.sink.Progress(r.Context(), source)
	if err != nil {
		h.log.Warn("read progress", "source", source, "err", err)
		h.unavailable(w, r)
		return
	}
	writeJSON(w, http.StatusOK, progressBody{
		Source:     source,
		Epoch:      p.Epoch,
		AppliedSeq: p.AppliedSeq,
		StoredSeq:  p.StoredSeq,
		Blocked:    p.Blocked,
	})
}

// refusal is an error answer: a status and one sentence for the sender.
type refusal struct {
	status int
	msg    string
}

// authorize checks that the request's token belongs to source, and sets
// WWW-Authenticate when it answers 401.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, source string) *refusal {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pgcourier"`)
		return &refusal{http.StatusUnauthorized, "the request carries no token: send the route's token as Authorization: Bearer <token>"}
	}
	node, ok := h.tokens.node(auth)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pgcourier", error="invalid_token"`)
		return &refusal{http.StatusUnauthorized, "the token matches no source of this node: check the route's token on the sending node against the token-sha256 of its [[listen.source]] on this node"}
	}
	switch {
	case source == h.node:
		return &refusal{http.StatusForbidden, fmt.Sprintf("%q is this node's own id: a node never receives its own batches", clip(source))}
	case source != node:
		return &refusal{http.StatusForbidden, fmt.Sprintf("a token only speaks for its own source: this token is %s's, and the path names %q", node, clip(source))}
	}
	return nil
}

// unavailable answers 503: the sink failed, and the sender should try again.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Retry-After", "1")
	h.fail(w, r, &refusal{http.StatusServiceUnavailable, "the receiving node cannot take batches right now: try again shortly"})
}

// fail writes ref as a JSON error answer and logs it: at Debug for a
// request the protocol does not know, at Warn for a refused one.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, ref *refusal) {
	level := slog.LevelWarn
	switch ref.status {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusServiceUnavailable:
		level = slog.LevelDebug
	case http.StatusInternalServerError:
		level = slog.LevelError
	}
	h.log.Log(r.Context(), level, "request refused", "status", ref.status, "err", ref.msg,
		"method", r.Method, "path", clip(r.URL.EscapedPath()), "remote", r.RemoteAddr)
	writeJSON(w, ref.status, errorBody{Error: ref.msg, Status: ref.status})
}

// allowMethod reports whether r's method is one of methods, and sets the
// Allow header if not.
func allowMethod(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	return false
}

func errMethod(r *http.Request, want string) *refusal {
	return &refusal{http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed here: use %s", clip(r.Method), want)}
}

// writeJSON writes v as the JSON body of an answer with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the sender may be gone; nothing to do then
}

// unescape returns the path segment s unescaped, or s if it cannot be.
func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// clip shortens a string from the request for a message or a log record.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// retryAfterSeconds returns d in whole seconds for a Retry-After header,
// rounded up and at least 1.
func retryAfterSeconds(d time.Duration) string {
	s := max(int64((d+time.Second-1)/time.Second), 1)
	return strconv.FormatInt(s, 10)
}
