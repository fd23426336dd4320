package limiter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// Defaults that NewTransport and NewGroupTransport set.
const (
	DefaultMaxRetries    = 2
	DefaultMaxRetryAfter = 5 * time.Minute
)

// A throttled response that names no valid wait is retried after a
// backoff: backoffBase, doubled for each throttled attempt of the same
// request, at most backoffMax and MaxRetryAfter, less a random part of up
// to half ("equal jitter", so that clients throttled together spread out
// while each still waits at least half).
const (
	backoffBase = time.Second
	backoffMax  = time.Minute
)

// drainLimit bounds how much of a discarded response body is read so that
// its connection can be reused; a longer body is closed unread.
const drainLimit = 64 << 10

// A Pauser can be told to admit no call before a given time. *Limiter is
// one, and so is the Redis store's limiter; a Transport pauses its Acquirer
// when the Acquirer is a Pauser.
type Pauser interface {
	PauseUntil(t time.Time)
}

var _ Pauser = (*Limiter)(nil)

// Transport is an http.RoundTripper that sends each request through a
// limiter: it acquires a Permit before the request is sent and marks it
// Done when the response headers have arrived or the attempt has failed,
// so that network delay never brings two calls at the server closer than
// the limiter's window. Make one with NewTransport or NewGroupTransport; a
// Transport built otherwise has no limiter and fails every request.
//
// A response with status 429 Too Many Requests, or 503 Service
// Unavailable with a Retry-After, means the server throttled the call.
// The Transport then pauses the limiter, when it is a Pauser, until the
// time the server names (see MaxRetryAfter), so that no call of the same
// limiter earns another 429; when the server names no valid time, for a
// backoff of about a second, doubling with each retry of the request up to
// a minute, with jitter. It sends the request again, at most MaxRetries
// times, when its body can be replayed (no body, http.NoBody, or GetBody
// set) and the wait ends before the request context's deadline; otherwise
// it returns the throttled response at once, as it is. A response of any status whose rate limit headers say the
// server's quota is spent (RateLimit, RateLimit-Remaining,
// X-RateLimit-Remaining, with their resets) pauses the limiter until the
// reset; such headers only ever tighten the limiter.
//
// RoundTrip keeps the contract of http.RoundTripper: it does not modify
// the request, it closes the request body even on errors, it returns a
// response or an error but not both, and it drains and closes every
// response body it does not return.
//
// A Transport is safe for concurrent use. Its fields must not be changed
// once it is in use.
type Transport struct {
	// Base sends the requests. If nil, http.DefaultTransport is used.
	Base http.RoundTripper

	// MaxRetries is how many times a throttled request is sent again.
	// NewTransport sets DefaultMaxRetries (2); 0 or less never retries.
	MaxRetries int

	// MaxRetryAfter caps the wait that a throttled response or a spent
	// quota imposes: a Retry-After or a reset further away counts as
	// MaxRetryAfter. NewTransport sets DefaultMaxRetryAfter (5 minutes);
	// 0 or less also means DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration

	// Clock tells the time for the waits the server names, such as an
	// HTTP-date in Retry-After, and, for an Acquirer that is not a Pauser,
	// times the wait before a retry. If nil, the Transport uses the clock
	// of the *Limiter or *Group it was made with, and SystemClock for any
	// other Acquirer.
	Clock Clock

	// OnThrottle, if not nil, is called after each throttled response
	// with the wait the Transport chose, whether or not it then retries.
	// It must not read or close resp.Body, nor modify req or resp.
	OnThrottle func(req *http.Request, resp *http.Response, wait time.Duration)

	// OnWait, if not nil, is called after each acquisition of a permit
	// that took longer than WaitThreshold, with how long it took, as read
	// from Clock. Waits before a retry count too when the Acquirer is a
	// Pauser (or a Group); the sleep before retrying through another
	// Acquirer is not reported. It must not modify req.
	OnWait func(req *http.Request, waited time.Duration)

	// WaitThreshold is how long an acquisition may take before OnWait
	// hears of it. With 0, every acquisition that took any time does,
	// which on SystemClock is nearly every one.
	WaitThreshold time.Duration

	// Set by the constructors.
	acquirer Acquirer
	pauser   Pauser // acquirer as a Pauser, or nil
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
	}
	if l, ok := a.(*Limiter); ok {
		if l == nil {
			return t // no limiter: RoundTrip fails rather than panics
		}
		t.clock = l.clock
	}
	t.acquirer = a
	t.pauser, _ = a.(Pauser)
	return t
}

// NewGroupTransport returns a Transport that sends each request through
// base after acquiring a permit from the limiter of g for the request's
// key, and pauses only that key's limiter after a throttled response. If
// key is nil, the key is the request's host (req.URL.Host), so that each
// server has its own limiter. If base is nil, http.DefaultTransport is
// used.
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
	// The request body is ours to close until Base has the request.
	closeBody := req.Body != nil
	defer func() {
		if closeBody {
			req.Body.Close()
		}
	}()
	if t.group == nil && t.acquirer == nil {
		return nil, errNoLimiter
	}
	ctx := req.Context()
	var key string
	if t.group != nil {
		key = t.key(req)
	}
	clock := t.Clock
	if clock == nil {
		clock = t.clock
	}
	limit := t.MaxRetryAfter
	if limit <= 0 {
		limit = DefaultMaxRetryAfter
	}
	r := req                // what this attempt sends
	var held *http.Response // the last throttled response, until its retry has a permit
	for attempt := 0; ; attempt++ {
		p, pauser, err := t.acquire(ctx, req, key, clock)
		if err != nil {
			if held != nil && ctx.Err() == nil {
				// The retry cannot be sent (no slot before the deadline,
				// queue full): the throttled response, as it is.
				return held, nil
			}
			return nil, err
		}
		held = nil
		if attempt > 0 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				p.Cancel()
				return nil, fmt.Errorf("limiter: replaying the request body: %w", err)
			}
			r = req.Clone(ctx)
			r.Body = body
		}
		closeBody = false
		resp, err := t.base().RoundTrip(r)
		if err != nil {
			p.Done()
			if resp != nil && resp.Body != nil {
				resp.Body.Close() // a response or an error, never both
			}
			return nil, err
		}
		if resp == nil {
			p.Done()
			return nil, errors.New("limiter: Base RoundTripper returned no response and no error")
		}

		var now time.Time
		var throttled bool
		var wait, pause time.Duration
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable || mayBeSpent(resp.Header) {
			// Most responses need no clock reading; these may.
			now = clock.Now()
			throttled, wait = t.throttle(resp, now, limit, attempt)
			pause = wait
			if d, ok := quotaReset(resp.Header, now, limit); ok {
				pause = max(pause, d)
			}
			if pauser != nil && pause > 0 {
				pauser.PauseUntil(now.Add(pause))
			}
		}
		// Done after the pause: the call keeps the limiter in use, so a
		// Group cannot have dropped the limiter that was just paused.
		p.Done()
		if !throttled {
			return resp, nil
		}
		if t.OnThrottle != nil {
			t.OnThrottle(req, resp, max(wait, pause))
		}
		if attempt >= t.MaxRetries || !replayable(req) || pastDeadline(ctx, now.Add(max(wait, pause))) {
			return resp, nil
		}
		complete := bufferBody(resp)
		if pauser == nil {
			// Nothing else holds the retry back until the server's time.
			if err := sleepOn(ctx, clock, max(wait, pause)); err != nil {
				return nil, err
			}
		}
		if complete {
			held = resp
		}
		// With a Pauser, the next Acquire waits for the pause to end.
	}
}

// acquire returns a permit for req, from the key's limiter of the group or
// from the Acquirer, and the Pauser to pause after a throttled response.
func (t *Transport) acquire(ctx context.Context, req *http.Request, key string, clock Clock) (Permit, Pauser, error) {
	var start time.Time
	if t.OnWait != nil {
		start = clock.Now()
	}
	var p Permit
	var pauser Pauser
	var err error
	if t.group != nil {
		var l *Limiter
		p, l, err = t.group.acquire(ctx, key)
		if l != nil {
			pauser = l
		}
	} else {
		p, err = t.acquirer.Acquire(ctx)
		pauser = t.pauser
	}
	if err != nil {
		return nil, nil, err
	}
	if p == nil {
		p = noPermit{} // a careless Acquirer; nothing to end
	}
	if t.OnWait != nil {
		if waited := clock.Now().Sub(start); waited > t.WaitThreshold {
			t.OnWait(req, waited)
		}
	}
	return p, pauser, nil
}

// throttle reports whether resp says the server throttled the call, and
// if so how long to wait before calling again: the Retry-After, else for
// a 429 the reset of a spent quota, else a backoff.
func (t *Transport) throttle(resp *http.Response, now time.Time, limit time.Duration, attempt int) (bool, time.Duration) {
	switch resp.StatusCode {
	case http.StatusTooManyRequests:
		if d, ok := retryAfter(resp.Header, now, limit); ok {
			return true, d
		}
		if d, ok := quotaReset(resp.Header, now, limit); ok && d > 0 {
			return true, d
		}
		return true, retryBackoff(attempt, limit)
	case http.StatusServiceUnavailable:
		// A 503 is throttling only when the server says when to come back.
		d, ok := retryAfter(resp.Header, now, limit)
		return ok, d
	}
	return false, 0
}

// retryBackoff returns the wait before retrying the attempt-th throttled
// attempt of a request (from 0) whose response named no wait.
func retryBackoff(attempt int, limit time.Duration) time.Duration {
	d := backoffMax
	if attempt < 8 {
		d = min(backoffBase<<attempt, backoffMax)
	}
	d = max(0, min(d, limit))
	return d - rand.N(d/2+1)
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// replayable reports whether req's body can be sent again.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// pastDeadline reports whether ctx must end before at.
func pastDeadline(ctx context.Context, at time.Time) bool {
	dl, ok := ctx.Deadline()
	return ok && !at.Before(dl)
}

// bufferBody reads a bounded part of a response body that may not be
// returned, so that its connection can be reused, and closes it. When the
// whole body fit, resp gets it back in memory, and bufferBody reports true.
func bufferBody(resp *http.Response) bool {
	if resp.Body == nil {
		return true
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, drainLimit+1))
	resp.Body.Close()
	if err != nil || len(b) > drainLimit {
		return false
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return true
}

// sleepOn waits for d on c, or until ctx ends.
func sleepOn(ctx context.Context, c Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := c.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type noPermit struct{}

func (noPermit) Done()   {}
func (noPermit) Cancel() {}
