package limiter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// call is one RoundTrip: the request, the connection key's state, and the
// attempt in progress. Its steps (acquire, send, classify, mayRetry,
// backoff) are what RoundTrip loops over.
type call struct {
	t     *Transport
	req   *http.Request
	ctx   context.Context
	clock Clock
	conn  *connState
	put   bool // conn came from a connTable: give it back
	key   string
	route int // index in routes, or -1
	rt    *routeTable
	cost  int
	body  *sharedBody // req.Body lent to Base, when it may be replayed
	sent  bool        // Base has had the request: the body is no longer ours to close

	throttles int            // throttled attempts so far
	held      *http.Response // the last throttled response, until its retry has a permit

	// The attempt in progress.
	permits  permitSet
	pauser   Pauser
	stats    statser
	admitted time.Time // when its permits were granted
	probe    bool      // it goes alone, after a reset, to learn the server's state
}

// newCall checks the Transport and sets up the call for req.
func (t *Transport) newCall(req *http.Request) (*call, error) {
	if t.group == nil && t.acquirer == nil {
		return nil, errNoLimiter
	}
	c := &call{t: t, req: req, ctx: req.Context(), clock: t.clockOf(), cost: 1, route: -1}
	if t.Cost != nil {
		c.cost = max(1, t.Cost(req))
	}
	if t.group != nil {
		c.key = t.key(req)
		c.conn, c.put = t.conns.get(c.key, c.clock.Now()), true
	} else {
		c.conn = t.single
	}
	if c.rt = t.routes.Load(); c.rt != nil {
		c.route = c.rt.match(req)
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody != nil && t.MaxRetries > 0 {
		c.body = newSharedBody(req.Body)
	}
	return c, nil
}

// end releases what the call holds once RoundTrip returns.
func (c *call) end() {
	switch {
	case !c.sent && c.req.Body != nil:
		c.req.Body.Close()
	case c.body != nil:
		c.body.release()
	}
	if c.put {
		c.conn.put()
	}
}

// acquire waits until the attempt may go: for the budget the server
// named, then for the permits of the request's route, of what the
// Transport learned, and of the connection, in that order, so that no
// slot of the connection is held while the request waits for its route.
func (c *call) acquire() error {
	var start time.Time
	if c.t.OnWait != nil {
		start = c.clock.Now()
	}
	for {
		ok, err := c.gate()
		if err != nil {
			return err
		}
		if ok {
			break
		}
	}
	if err := c.acquirePermits(); err != nil {
		c.ungate()
		return err
	}
	if c.t.OnWait != nil {
		if waited := c.clock.Now().Sub(start); waited > c.t.WaitThreshold {
			c.t.OnWait(c.req, waited)
		}
	}
	return nil
}

// gate takes the call's weight from the budget the server named, or
// waits for it and reports false.
func (c *call) gate() (bool, error) {
	if c.t.DisableLearning {
		return true, nil
	}
	now := c.clock.Now()
	c.conn.mu.Lock()
	until, probe, isProbe, ok := c.conn.learn.gate(now)
	if ok {
		c.conn.learn.take(c.cost)
		c.probe = isProbe
	}
	c.conn.mu.Unlock()
	if ok {
		return true, nil
	}
	return false, waitGate(c.ctx, c.clock, now, until, probe)
}

// ungate gives back what gate took, for an attempt that is not sent.
func (c *call) ungate() {
	if c.t.DisableLearning {
		return
	}
	c.conn.mu.Lock()
	c.conn.learn.take(-c.cost)
	if c.probe {
		c.conn.learn.endProbe()
		c.conn.learn.probing = true // the next call probes instead
		c.probe = false
	}
	c.conn.mu.Unlock()
}

// acquirePermits takes the attempt's permits, cancelling those it took
// when one fails.
func (c *call) acquirePermits() error {
	c.permits = permitSet{}
	var limiters [3]*Limiter
	ls := limiters[:0]
	if c.route >= 0 {
		l, err := c.conn.route(c.t, c.rt, c.route)
		if err != nil {
			return err
		}
		ls = append(ls, l)
	}
	if !c.t.DisableLearning {
		now := c.clock.Now()
		c.conn.mu.Lock()
		c.conn.learn.relaxStep(now, c.clock)
		if p := c.conn.learn.policy; p != nil {
			ls = append(ls, p)
		}
		if p := c.conn.learn.pace; p != nil {
			ls = append(ls, p)
		}
		c.conn.mu.Unlock()
	}
	for _, l := range ls {
		p, err := l.AcquireN(c.ctx, c.cost)
		if err != nil {
			c.permits.cancel()
			return err
		}
		c.permits.add(p)
	}
	p, err := c.acquireConn()
	if err != nil {
		c.permits.cancel()
		return err
	}
	c.permits.add(p)
	c.admitted = c.clock.Now()
	return nil
}

// acquireConn takes the connection's permit: from the key's limiter of the
// group, or from the Acquirer.
func (c *call) acquireConn() (Permit, error) {
	var p Permit
	var err error
	if c.t.group != nil {
		l := c.t.group.Get(c.key)
		c.pauser, c.stats = l, l
		p, err = l.AcquireN(c.ctx, c.cost)
	} else {
		c.pauser = c.t.pauser
		c.stats, _ = c.t.acquirer.(statser)
		if an, ok := c.t.acquirer.(acquirerN); ok {
			p, err = an.AcquireN(c.ctx, c.cost)
		} else {
			p, err = c.t.acquirer.Acquire(c.ctx)
		}
	}
	if err == nil && p == nil {
		p = noPermit{} // a careless Acquirer; nothing to end
	}
	return p, err
}

// acquireFailed returns what RoundTrip returns when acquire fails.
func (c *call) acquireFailed(err error) (*http.Response, error) {
	if c.held != nil && c.ctx.Err() == nil {
		// The retry cannot be sent (no slot before the deadline, queue
		// full): the throttled response, as it is.
		return c.held, nil
	}
	if errors.Is(err, ErrWouldExceedDeadline) {
		return nil, &deadlineWaitError{err}
	}
	return nil, err
}

// send sends the attempt through Base. On an error it ends the permits:
// Cancel when the request never reached the server, Done otherwise.
func (c *call) send() (*http.Response, error) {
	r, err := c.attemptRequest()
	if err != nil {
		c.permits.cancel()
		c.ungate()
		return nil, err
	}
	c.sent = true
	c.conn.mu.Lock()
	c.conn.inflight++
	c.conn.mu.Unlock()
	resp, err := c.t.base().RoundTrip(r)
	if err == nil && resp == nil {
		err = errors.New("limiter: Base RoundTripper returned no response and no error")
	}
	if err != nil {
		if resp != nil && resp.Body != nil {
			resp.Body.Close() // a response or an error, never both
		}
		c.failed(err)
		return nil, err
	}
	return resp, nil
}

// attemptRequest returns the request this attempt sends: req, with its
// body lent (the first attempt) or replayed through GetBody (a retry).
// The caller's request is never modified.
func (c *call) attemptRequest() (*http.Request, error) {
	req := c.req
	if c.throttles == 0 {
		if c.body == nil {
			return req, nil
		}
		r := req.WithContext(c.ctx)
		r.Body = c.body
		return r, nil
	}
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("limiter: replaying the request body: %w", err)
	}
	r := req.WithContext(c.ctx)
	r.Body = body
	if sameBody(body, req.Body) {
		// GetBody hands out the body it was given: it stays the caller's.
		if c.body != nil {
			c.body.keep()
		}
		r.Body = noClose{body}
	}
	return r, nil
}

// failed ends an attempt that Base failed.
func (c *call) failed(err error) {
	c.conn.mu.Lock()
	c.conn.inflight--
	if c.probe {
		c.conn.learn.endProbe()
		c.conn.learn.probing = true
	}
	c.conn.mu.Unlock()
	if neverSent(err) {
		c.permits.cancel()
		return
	}
	c.permits.done()
}

// neverSent reports whether err says that the request never reached the
// server: the connection to it, or to the proxy, could not be made.
func neverSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && (op.Op == "dial" || op.Op == "proxyconnect") {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// classify reads the response: whether it is throttled, and what it says
// about the server's quota, which pauses the limiter and teaches the
// learner. Then the attempt's permits are done.
func (c *call) classify(resp *http.Response) verdict {
	now := c.clock.Now()
	v := c.t.classify(resp, now, c.throttles)
	if v.pause > 0 && c.pauser != nil {
		c.pauser.PauseUntil(now.Add(min(v.pause, c.t.maxRetryAfter())))
	}
	c.learn(resp, now, v)
	// Done after the pause: the call keeps the limiter in use, so a
	// Group cannot have dropped the limiter that was just paused.
	c.permits.done()
	return v
}

// learn updates what the Transport knows of the server from resp.
func (c *call) learn(resp *http.Response, now time.Time, v verdict) {
	var cfg Stats
	hasCfg := c.stats != nil
	if hasCfg && !c.t.DisableLearning && (v.throttled || len(resp.Header[hdrRateLimitPolicy]) > 0) {
		cfg = c.stats.Stats()
	}
	c.conn.mu.Lock()
	defer c.conn.mu.Unlock()
	c.conn.inflight--
	if c.t.DisableLearning {
		return
	}
	ln := &c.conn.learn
	if mayHaveQuota(resp.Header) || len(resp.Header[hdrRateLimitPolicy]) > 0 {
		ln.observe(resp.Header, now, serverNow(resp.Header, now), c.conn.inflight, cfg, hasCfg, c.clock)
	}
	if v.throttled {
		ln.tighten(now, c.admitted, cfg, c.clock)
	} else {
		ln.accepted(now, c.cost)
	}
	if c.probe {
		ln.endProbe()
		c.probe = false
	}
}

// mayRetry reports whether a throttled request is to be sent again, after
// telling OnThrottle.
func (c *call) mayRetry(resp *http.Response, v verdict) bool {
	limit := c.t.maxRetryAfter()
	if c.t.OnThrottle != nil {
		c.t.OnThrottle(c.req, resp, min(v.pause, limit))
	}
	return v.pause <= limit && c.throttles < c.t.MaxRetries && bodyReplayable(c.req) && !pastDeadline(c.ctx, v.pause)
}

// backoff discards the throttled response and waits before the retry:
// with a Pauser the next acquire waits for the pause, otherwise this
// sleeps for it.
func (c *call) backoff(resp *http.Response, v verdict) error {
	complete := bufferBody(resp)
	c.throttles++
	c.held = nil
	if c.pauser == nil {
		if err := sleepOn(c.ctx, c.clock, v.pause); err != nil {
			return err
		}
	}
	if complete {
		c.held = resp
	}
	return nil
}

// permitSet is the permits of one attempt: a route's, the learned
// limiters', the connection's.
type permitSet struct {
	ps [4]Permit
	n  int
}

func (s *permitSet) add(p Permit) {
	s.ps[s.n] = p
	s.n++
}

func (s *permitSet) done() {
	for _, p := range s.ps[:s.n] {
		p.Done()
	}
	s.n = 0
}

func (s *permitSet) cancel() {
	for _, p := range s.ps[:s.n] {
		p.Cancel()
	}
	s.n = 0
}

type noPermit struct{}

func (noPermit) Done()   {}
func (noPermit) Cancel() {}

// deadlineWaitError is the error of a RoundTrip that could not get a slot
// before its context's deadline. It has the methods that url.Error,
// net.Error and retrying clients check for directly, without unwrapping.
type deadlineWaitError struct{ err error }

func (e *deadlineWaitError) Error() string { return e.err.Error() }
func (e *deadlineWaitError) Unwrap() error { return e.err }

// Timeout reports true: the request ran out of time.
func (e *deadlineWaitError) Timeout() bool { return true }

// NonRetriable marks the error as one that retrying does not cure.
func (e *deadlineWaitError) NonRetriable() {}
