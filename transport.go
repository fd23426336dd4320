package limiter

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults that NewTransport and NewGroupTransport set.
const (
	DefaultMaxRetries    = 2
	DefaultMaxRetryAfter = 5 * time.Minute
)

// A throttled response that names no valid wait is retried after a
// backoff of backoffBase, doubled for each throttled attempt of the same
// request, at most backoffMax; see retryBackoff.
const (
	backoffBase = time.Second
	backoffMax  = time.Minute
)

// drainLimit bounds how much of a discarded response body is read so that
// its connection can be reused (a longer body is closed unread), and how
// much of a body Classify sees.
const drainLimit = 64 << 10

// A Pauser can be told to admit no call before a given time. *Limiter is
// one, and so is the Redis store's limiter; a Transport pauses its Acquirer
// when the Acquirer is a Pauser.
type Pauser interface {
	PauseUntil(t time.Time)
}

var _ Pauser = (*Limiter)(nil)

// acquirerN is an Acquirer that can weigh a call, as *Limiter can.
type acquirerN interface {
	AcquireN(ctx context.Context, n int) (Permit, error)
}

// statser is a limiter that tells its first rule, which the Transport
// needs to learn a pacing; *Limiter is one.
type statser interface {
	Stats() Stats
}

// Transport is an http.RoundTripper that sends each request through a
// limiter: it acquires a Permit before each attempt is sent and marks it
// Done when the response headers have arrived or the attempt has failed,
// so that network delay never brings two calls at the server closer than
// the limiter's window. Make one with NewTransport or NewGroupTransport; a
// Transport built otherwise has no limiter and fails every request.
//
// Throttled responses, by default, are: 429 Too Many Requests; 503
// Service Unavailable with a Retry-After; and 403 Forbidden with a
// Retry-After or a header that says the quota is spent
// (X-RateLimit-Remaining: 0), as GitHub's secondary and primary limits
// send. Classify teaches the Transport other signals. After a throttled
// response the Transport pauses the limiter, when it is a Pauser, until
// the time the server names, so that no call of the same limiter earns
// another one; when the server names no valid time, for a backoff of about
// a second, doubling with each retry of the request up to a minute, with
// jitter. It sends the request again, at most MaxRetries times, when its
// body can be replayed (no body, http.NoBody, or GetBody set) and the wait
// ends before the request context's deadline. Otherwise it returns the
// throttled response at once, as it is; so too when the server's wait is
// longer than MaxRetryAfter, after pausing the limiter for MaxRetryAfter:
// a retry that could only earn another refusal is never sent. Absolute
// times (an HTTP-date, a reset in Unix seconds) are read against the
// response's Date header, so a client whose clock is off still waits as
// long as the server means. A deadline is real time (time.Until), however
// the limiter's clock reads.
//
// A response of any status whose rate limit headers say the server's quota
// is spent (RateLimit, RateLimit-Remaining, X-RateLimit-Remaining, with
// their resets) pauses the limiter until the reset. Unless
// DisableLearning is set, the Transport also learns the server, for each
// connection key: it admits no more calls before a reset than the
// server's headers say remain (after a reset, one call goes first and the
// others wait for its answer), makes a RateLimit-Policy stricter than the
// limiter's rules a rule, and tightens its pacing after a throttle that
// the rules did not prevent, relaxing it again slowly, never past the
// rules; a throttle that names a wait much shorter than the first rule's
// window (GitHub's secondary limit: 403, Retry-After: 1) teaches instead
// a rule of the calls the server accepted per that wait. A server whose quota does not reset at the reset it names (a
// sliding counter such as go-chi/httprate) is recognized after its first
// reset; from then on a spent count holds calls back for one pace instead
// of until the reset. See learn.go for the exact model. What it learns
// never lets through a call that the limiter's rules would hold back; on
// a group Transport it is kept per key, and dropped with the key's other
// state once idle.
//
// Route gives requests that match a pattern rules of their own, and Cost
// weighs requests. MarshalBinary and UnmarshalBinary carry the state of a
// Transport's limiters, its routes' among them, across a restart.
//
// An attempt that fails before it reached the server, because the
// connection could not be made (a dial or DNS error, including a proxy's),
// cancels its permits instead: the server never counted it, so its slot is
// returned rather than spent for a full window. Any other error may come
// after the server counted the call, and ends the permits with Done.
//
// When no slot frees before the request context's deadline, RoundTrip
// returns an error that matches ErrWouldExceedDeadline and
// context.DeadlineExceeded with errors.Is, and that itself has the methods
// Timeout() bool, reporting true, so that url.Error and net.Error see a
// timeout, and NonRetriable(), so that retrying clients (azcore) give up
// instead of sleeping into the deadline.
//
// RoundTrip keeps the contract of http.RoundTripper: it does not modify
// the request, it closes the request body even on errors, it returns a
// response or an error but not both, and it drains and closes every
// response body it does not return. A retry sends the body that GetBody
// returns. When GetBody hands out the very body the request carries,
// rewound (azcore's requests do), that body stays the caller's: no Close
// by Base or by the Transport reaches it, so the caller's own next
// GetBody still works.
//
// A Transport is safe for concurrent use. Its fields must not be changed
// once it is in use.
type Transport struct {
	// Base sends the requests. If nil, http.DefaultTransport is used.
	Base http.RoundTripper

	// MaxRetries is how many times a throttled request is sent again.
	// NewTransport sets DefaultMaxRetries (2); 0 or less never retries.
	// Under a client that retries itself (azcore, go-retryablehttp) set
	// it to 0, so that retries do not multiply.
	MaxRetries int

	// MaxRetryAfter caps the wait that a throttled response or a spent
	// quota imposes: a Retry-After or a reset further away pauses the
	// limiter for MaxRetryAfter, and the throttled response is returned
	// without a retry. NewTransport sets DefaultMaxRetryAfter (5
	// minutes); 0 or less also means DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration

	// Clock tells the time for the waits the server names and for what
	// the Transport learns and, for an Acquirer that is not a Pauser,
	// times the wait before a retry. If nil, the Transport uses the clock
	// of the *Limiter or *Group it was made with, and SystemClock for any
	// other Acquirer.
	Clock Clock

	// Classify, if not nil, teaches the Transport a server's own signal
	// of throttling. It is asked about every response with a status of
	// 400 or more before the default rules: when it reports throttled,
	// the response is throttled, and wait is how long the server asks to
	// wait (0 or less: unknown, and the headers or a backoff decide).
	// When it reports false, the default rules apply. Its resp is a copy
	// whose Body holds the first 64 KiB of the body, which Classify may
	// read; the caller still gets the whole body. It must not modify
	// resp's Request. It must be safe for concurrent use.
	Classify func(resp *http.Response) (throttled bool, wait time.Duration)

	// Cost, if not nil, returns the weight of a request: each attempt
	// takes that many slots of every rule at one instant (through
	// AcquireN when the Acquirer has it; other Acquirers take one slot).
	// A result below 1 counts as 1. It must not modify req.
	Cost func(req *http.Request) int

	// DisableLearning turns off what the Transport learns from the
	// server's responses (budgets, policies, pacing; see above). A spent
	// quota and a throttled response still pause the limiter.
	DisableLearning bool

	// OnThrottle, if not nil, is called after each throttled response
	// with the wait the Transport chose, whether or not it then retries.
	// It must not read or close resp.Body, nor modify req or resp.
	OnThrottle func(req *http.Request, resp *http.Response, wait time.Duration)

	// OnWait, if not nil, is called after each acquisition of permits
	// that took longer than WaitThreshold, with how long it took, as read
	// from Clock. Waits before a retry count too when the Acquirer is a
	// Pauser (or a Group); the sleep before retrying through another
	// Acquirer is not reported. It must not modify req.
	OnWait func(req *http.Request, waited time.Duration)

	// WaitThreshold is how long an acquisition may take before OnWait
	// hears of it. With 0, every acquisition that took any time does,
	// which on SystemClock is nearly every one.
	WaitThreshold time.Duration

	mu     sync.Mutex // serializes Route
	routes atomic.Pointer[routeTable]
	conns  connTable  // per key, for a group
	single *connState // for one Acquirer

	// Set by the constructors.
	acquirer Acquirer
	lim      *Limiter // acquirer as a *Limiter, or nil
	pauser   Pauser   // acquirer as a Pauser, or nil
	group    *Group
	key      func(*http.Request) string
	clock    Clock // used when Clock is nil
}

// NewTransport returns a Transport that sends requests through base after
// acquiring a permit from a, and pauses a after throttled responses when a
// is a Pauser, as *Limiter is. If base is nil, http.DefaultTransport is
// used.
func NewTransport(base http.RoundTripper, a Acquirer) *Transport {
	t := &Transport{
		Base:          base,
		MaxRetries:    DefaultMaxRetries,
		MaxRetryAfter: DefaultMaxRetryAfter,
		clock:         SystemClock(),
		single:        &connState{},
	}
	if l, ok := a.(*Limiter); ok {
		if l == nil {
			return t // no limiter: RoundTrip fails rather than panics
		}
		t.clock = l.clock
		t.lim = l
	}
	t.acquirer = a
	t.pauser, _ = a.(Pauser)
	return t
}

// NewGroupTransport returns a Transport that sends each request through
// base after acquiring a permit from the limiter of g for the request's
// key, and pauses only that key's limiter after a throttled response;
// routes and what the Transport learns are per key too. If key is nil,
// the key is the request's host (req.URL.Host), so that each server has
// its own limiter. If base is nil, http.DefaultTransport is used.
func NewGroupTransport(base http.RoundTripper, g *Group, key func(*http.Request) string) *Transport {
	if key == nil {
		key = hostKey
	}
	t := &Transport{
		Base:          base,
		MaxRetries:    DefaultMaxRetries,
		MaxRetryAfter: DefaultMaxRetryAfter,
		group:         g,
		key:           key,
		clock:         SystemClock(),
	}
	if g != nil {
		t.clock = g.cfg.clock
	}
	return t
}

func hostKey(req *http.Request) string {
	if req.URL == nil {
		return ""
	}
	return req.URL.Host
}

var errNoLimiter = errors.New("limiter: Transport has no limiter; make it with NewTransport or NewGroupTransport")

// RoundTrip sends req through the limiter, as the Transport's doc says,
// and returns the server's response.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var c trip // on the stack: nothing keeps it past RoundTrip
	if err := c.start(t, req); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	defer c.end()
	for {
		if err := c.acquire(); err != nil {
			return c.acquireFailed(err)
		}
		resp, err := c.send()
		if err != nil {
			return nil, err
		}
		v := c.classify(resp)
		if !v.throttled || !c.mayRetry(resp, v) {
			return resp, nil
		}
		if err := c.backoff(resp, v); err != nil {
			return nil, err
		}
	}
}

// CloseIdleConnections closes the idle connections of Base, when Base has
// such a method, as *http.Transport does; http.Client calls it.
func (t *Transport) CloseIdleConnections() {
	type closeIdler interface{ CloseIdleConnections() }
	if ci, ok := t.base().(closeIdler); ok {
		ci.CloseIdleConnections()
	}
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

func (t *Transport) clockOf() Clock {
	if t.Clock != nil {
		return t.Clock
	}
	if t.clock != nil {
		return t.clock
	}
	return SystemClock()
}

func (t *Transport) maxRetryAfter() time.Duration {
	if t.MaxRetryAfter <= 0 {
		return DefaultMaxRetryAfter
	}
	return t.MaxRetryAfter
}

// sleepOn waits for d on c, until wake delivers (a nil wake never does),
// or until ctx ends.
func sleepOn(ctx context.Context, c Clock, d time.Duration, wake <-chan struct{}) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := c.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C():
		return nil
	case <-wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pastDeadline reports whether ctx ends before a wait of d does. The
// deadline is real time, whatever clock d was read on.
func pastDeadline(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return ok && d >= time.Until(dl)
}
