package rest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/klauspost/compress/zstd"

	"github.com/pgcourier/pgcourier"
)

// Defaults and bounds of a Client.
const (
	// DefaultTimeout bounds one attempt of an upload.
	DefaultTimeout = 30 * time.Second
	// DefaultRetryMax is how many times the Client retries one upload.
	DefaultRetryMax = 3
	// ProgressTimeout bounds a progress request, which is never retried.
	ProgressTimeout = 2 * time.Second
)

// maxAnswerBytes bounds the answer body the Client reads.
const maxAnswerBytes = 16 << 20

// ClientOptions configures a Client.
type ClientOptions struct {
	// URL is the upstream listener's base URL, http or https, such as
	// "https://community.local:8470". It may have a path (behind a reverse
	// proxy), but no user information, query or fragment.
	URL string
	// Token is the sending node's token. It is sent as a bearer token and
	// never logged nor put in an error.
	Token string
	// Encoding is the Content-Encoding of upload bodies: "" or "identity"
	// (the default: batches are compressed already), "gzip" or "zstd".
	Encoding string
	// Timeout bounds one attempt of an upload, plus the time its body takes
	// at pgcourier.SlowestLink; 0 means DefaultTimeout.
	Timeout time.Duration
	// RetryMax is how many times one upload is retried after a network
	// error, a timeout, a 5xx answer other than 501, or a 429; 0 means
	// DefaultRetryMax, and a negative value no retries.
	RetryMax int
	// HTTPClient is the base the Client's HTTP clients are copied from, with
	// its transport and TLS configuration; nil means a copy of
	// http.DefaultTransport. Its Timeout and CheckRedirect are replaced:
	// the Client follows no redirect.
	HTTPClient *http.Client
	// Logger receives the Client's log records, at Debug; nil discards them.
	Logger *slog.Logger
}

// Client uploads batches to an upstream node's Handler. It implements
// pgcourier.Sink and is safe for concurrent use.
type Client struct {
	base  string // the upstream's URL, without a trailing slash
	token string
	enc   string
	zenc  *zstd.Encoder // for the zstd encoding; nil otherwise
	rc    *retryablehttp.Client
	probe *http.Client // for Progress: no retries, a short timeout
	count *counters
	log   *slog.Logger
}

var _ pgcourier.Sink = (*Client)(nil)

// NewClient returns a Client for opts. It returns an error if the URL is not
// a plain http or https URL, the token is empty or not one word, the
// encoding is unknown, or Timeout is negative. It makes no request.
func NewClient(opts ClientOptions) (*Client, error) {
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("rest client: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("rest client: url %s: want an http:// or https:// url", opts.URL)
	case u.Host == "":
		return nil, fmt.Errorf("rest client: url %s has no host", opts.URL)
	case u.User != nil:
		return nil, errors.New("rest client: url has user information: remove it; the route's token is what authenticates")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, fmt.Errorf("rest client: url %s: remove the query or fragment", opts.URL)
	}
	if opts.Token == "" {
		return nil, errors.New("rest client: no token: \"pgcourier token --node ID\" makes one")
	}
	if strings.IndexFunc(opts.Token, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return nil, errors.New("rest client: the token holds spaces or control characters: the token file must hold the token alone")
	}
	enc, err := checkEncoding(opts.Encoding)
	if err != nil {
		return nil, fmt.Errorf("rest client: %w", err)
	}
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("rest client: timeout %s: want 0 (the default) or more", opts.Timeout)
	}
	c := &Client{
		base:  strings.TrimSuffix(u.String(), "/"),
		token: opts.Token,
		enc:   enc,
		count: new(counters),
		log:   opts.Logger,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if enc == encodingZstd {
		if c.zenc, err = newZstdEncoder(); err != nil {
			return nil, fmt.Errorf("rest client: %w", err)
		}
	}

	var hc http.Client
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient
	}
	tr := hc.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	hc.Transport = &countingTransport{base: tr, count: c.count}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	upload, probe := hc, hc
	upload.Timeout = orDefault(opts.Timeout, DefaultTimeout)
	probe.Timeout = ProgressTimeout
	c.probe = &probe

	retries := opts.RetryMax
	switch {
	case retries == 0:
		retries = DefaultRetryMax
	case retries < 0:
		retries = 0
	}
	c.rc = &retryablehttp.Client{
		HTTPClient:   &upload,
		Logger:       retryLogger{c.log},
		RetryWaitMin: retryWaitMin,
		RetryWaitMax: retryWaitMax,
		RetryMax:     retries,
		CheckRetry:   checkRetry,
		Backoff:      backoff,
		ErrorHandler: func(resp *http.Response, err error, attempts int) (*http.Response, error) {
			if ue, ok := err.(*url.Error); ok {
				err = ue.Err // the URL is the Client's, said once by the caller
			}
			if err != nil && attempts > 1 {
				err = fmt.Errorf("after %d attempts: %w", attempts, err)
			}
			return resp, err
		},
	}
	return c, nil
}

// uploadTimeout bounds one attempt of an upload of n body bytes: the base
// timeout plus the time to send the body over the slowest link senders
// allow for, as the router's time for the whole delivery does, so that a
// large request still gets through a poor link.
func uploadTimeout(base time.Duration, n int) time.Duration {
	return base + pgcourier.LinkTime(n)
}

// retrying returns the client's retrying client with each attempt bounded
// by timeout.
func (c *Client) retrying(timeout time.Duration) *retryablehttp.Client {
	hc := *c.rc.HTTPClient
	hc.Timeout = timeout
	return &retryablehttp.Client{
		HTTPClient:   &hc,
		Logger:       c.rc.Logger,
		RetryWaitMin: c.rc.RetryWaitMin,
		RetryWaitMax: c.rc.RetryWaitMax,
		RetryMax:     c.rc.RetryMax,
		CheckRetry:   c.rc.CheckRetry,
		Backoff:      c.rc.Backoff,
		ErrorHandler: c.rc.ErrorHandler,
	}
}

// orDefault returns d, or def if d is 0.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Deliver uploads parcels in one request and returns the upstream's
// receipts; gap, blocked and refused are receipts, not errors. It retries
// the request as ClientOptions.RetryMax says, which is safe: the upstream
// deduplicates. An error wraps pgcourier.ErrUnreachable when the upstream
// could not be reached, the context's error when ctx is done, and a
// *StatusError when the upstream refused the request or kept failing.
func (c *Client) Deliver(ctx context.Context, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	if err := pgcourier.CheckParcels(parcels); err != nil {
		return nil, fmt.Errorf("upload to %s: %w", c.base, err)
	}
	if len(parcels) == 0 {
		return nil, nil
	}
	size := 0
	for i, p := range parcels {
		if len(p.Data) == 0 {
			return nil, fmt.Errorf("upload to %s: parcel %d (seq %d) has no data", c.base, i, p.Seq)
		}
		size += len(p.Data) + 10
	}
	body := make([]byte, 0, size)
	for _, p := range parcels {
		body = appendFrame(body, p.Data)
	}
	body, err := compressBody(c.enc, body, c.zenc)
	if err != nil {
		return nil, fmt.Errorf("upload to %s: %w", c.base, err)
	}

	first := parcels[0]
	endpoint := c.base + sourcesPrefix + url.PathEscape(first.Source) + "/batches/" + strconv.FormatUint(first.Seq, 10)
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPut, endpoint, body)
	if err != nil {
		return nil, fmt.Errorf("upload to %s: %w", c.base, err)
	}
	c.setHeaders(req.Header)
	req.Header.Set("Content-Type", MediaType)
	if c.enc != encodingIdentity {
		req.Header.Set("Content-Encoding", c.enc)
	}
	start := time.Now()
	resp, err := c.retrying(uploadTimeout(c.rc.HTTPClient.Timeout, len(body))).Do(req)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, c.linkError("upload to", ctx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return nil, fmt.Errorf("upload to %s: read the answer: %w", c.base, err)
	}
	c.log.Debug("upload", "source", first.Source, "seq", first.Seq, "batches", len(parcels),
		"bytes", len(body), "status", resp.StatusCode, "took", time.Since(start).Round(10*time.Microsecond))
	switch resp.StatusCode {
	case http.StatusOK, http.StatusConflict, http.StatusUnprocessableEntity, http.StatusLocked:
		receipts, err := parseReceipts(parcels, data)
		if err != nil {
			return nil, fmt.Errorf("upload to %s: %d answer: %w", c.base, resp.StatusCode, err)
		}
		return receipts, nil
	}
	return nil, fmt.Errorf("upload to %s: %w", c.base, answerError(resp, data))
}

// parseReceipts returns the receipts of an upload's answer, checking them
// against the parcels sent.
func parseReceipts(parcels []pgcourier.Parcel, data []byte) ([]pgcourier.Receipt, error) {
	var ub uploadBody
	if err := json.Unmarshal(data, &ub); err != nil {
		return nil, fmt.Errorf("the answer is not the protocol's JSON: %w", err)
	}
	first := parcels[0]
	if ub.Source != first.Source {
		return nil, fmt.Errorf("the answer is about source %q, the upload %s", ub.Source, first.Source)
	}
	if len(ub.Receipts) == 0 || len(ub.Receipts) > len(parcels) {
		return nil, fmt.Errorf("the answer has %d receipts for %d batches", len(ub.Receipts), len(parcels))
	}
	receipts := make([]pgcourier.Receipt, len(ub.Receipts))
	for i, rb := range ub.Receipts {
		if rb.Seq != parcels[i].Seq {
			return nil, fmt.Errorf("receipt %d is for seq %d, want %d", i, rb.Seq, parcels[i].Seq)
		}
		switch rb.Outcome {
		case pgcourier.Applied, pgcourier.Duplicate, pgcourier.Stored, pgcourier.Gap, pgcourier.Blocked, pgcourier.Refused:
		default:
			return nil, fmt.Errorf("receipt %d has outcome %q, which this version does not know: upgrade pgcourier on this node", i, rb.Outcome)
		}
		receipts[i] = rb.receipt(ub.Source)
	}
	return receipts, nil
}

// Progress asks the upstream how far source's stream has got there. It is
// a cheap probe: one request, bounded by ProgressTimeout, never retried.
// Its errors are classified as Deliver's.
func (c *Client) Progress(ctx context.Context, source string) (pgcourier.Progress, error) {
	if err := pgcourier.CheckNodeID(source); err != nil {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: %w", c.base, err)
	}
	endpoint := c.base + sourcesPrefix + url.PathEscape(source) + "/progress"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: %w", c.base, err)
	}
	c.setHeaders(req.Header)
	resp, err := c.probe.Do(req)
	if err != nil {
		return pgcourier.Progress{}, c.linkError("progress from", ctx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: read the answer: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: %w", c.base, answerError(resp, data))
	}
	var pb progressBody
	if err := json.Unmarshal(data, &pb); err != nil {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: the answer is not the protocol's JSON: %w", c.base, err)
	}
	if pb.Source != source {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: the answer is about source %q, not %s", c.base, pb.Source, source)
	}
	return pgcourier.Progress{
		Source:     pb.Source,
		Epoch:      pb.Epoch,
		AppliedSeq: pb.AppliedSeq,
		StoredSeq:  pb.StoredSeq,
		Blocked:    pb.Blocked,
	}, nil
}

// Stats returns what the Client has sent and received so far.
func (c *Client) Stats() ClientStats { return c.count.stats() }

func (c *Client) setHeaders(h http.Header) {
	h.Set("Authorization", "Bearer "+c.token)
	h.Set("Accept", "application/json")
	h.Set("User-Agent", "pgcourier")
}

// linkError returns the error for a request that got no answer.
func (c *Client) linkError(op string, ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s %s: %w", op, c.base, ctxErr)
	}
	if isCertError(err) {
		return fmt.Errorf("%s %s: the upstream's TLS certificate is not trusted (check the route's url and the certificate the upstream serves): %w", op, c.base, err)
	}
	if ue, ok := err.(*url.Error); ok {
		err = ue.Err // the URL is c.base's, said once already
	}
	return fmt.Errorf("%s %s: %w: %w", op, c.base, pgcourier.ErrUnreachable, err)
}

// answerError returns the error for an answer that carries no receipt.
func answerError(resp *http.Response, data []byte) *StatusError {
	e := &StatusError{StatusCode: resp.StatusCode}
	var eb errorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		e.Message = eb.Error
	} else {
		e.Message = snippet(data)
	}
	if d, ok := retryAfter(resp.Header); ok {
		e.RetryAfter = d
	}
	return e
}

// snippet returns the start of a body that is not the protocol's JSON, on
// one line, for an error message.
func snippet(data []byte) string {
	const n = 200
	s := strings.Join(strings.Fields(strings.ToValidUTF8(string(data[:min(len(data), 4*n)]), "?")), " ")
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}
