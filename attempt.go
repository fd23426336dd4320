package limiter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// trip is one RoundTrip: the request, the connection key's state, and the
// attempt in progress. Its steps (acquire, send, classify, mayRetry,
// backoff) are what RoundTrip loops over.
type trip struct {
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
	now      time.Time // the latest reading of clock, which the limiters share; read again after any wait
	shared   bool      // the connection's *Limiter reads clock: now serves it
	admitted time.Time // when it passed the gate, on its way to its permits
	seq      int64     // the learner's seq once it was admitted
	before   int       // the attempts in flight when it was admitted
	probe    bool      // it goes alone, after a reset, to learn the server's state
}

// start checks the Transport and sets up c, which is zero, for req.
func (c *trip) start(t *Transport, req *http.Request) error {
	if t.group == nil && t.acquirer == nil {
		return errNoLimiter
	}
	*c = trip{t: t, req: req, ctx: req.Context(), clock: t.clockOf(), cost: 1, route: -1, shared: t.Clock == nil && t.lim != nil}
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
	return nil
}

// end releases what the call holds once RoundTrip returns.
func (c *trip) end() {
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
// When what was learned changed while it waited, it starts over, so that
// no call queued before a lesson slips past it.
func (c *trip) acquire() error {
	c.now = c.clock.Now()
	start := c.now
	for {
		learned, gen, err := c.gate()
		if err != nil {
			return err
		}
		if err := c.acquirePermits(learned); err != nil {
			return err
		}
		if c.admit(gen) {
			break
		}
		c.now = c.clock.Now()
	}
	if c.t.OnWait != nil {
		if waited := c.clock.Now().Sub(start); waited > c.t.WaitThreshold {
			c.t.OnWait(c.req, waited)
		}
	}
	return nil
}

// learnedSet is the learned limiters an attempt passes: policy, window,
// pacing, each nil when there is none. An array, not a slice, so that it
// costs no allocation.
type learnedSet [3]*Limiter

// gate waits until the budget the server named lets a call start, and
// returns the learned limiters to pass and their generation.
func (c *trip) gate() (learned learnedSet, gen int, err error) {
	if c.t.DisableLearning {
		return learned, 0, nil
	}
	for {
		// This reading is also the attempt's admission time: a lesson
		// learned while the attempt waits for its permits makes it start
		// over (see admit), so nothing learned lies between the two.
		now := c.now
		c.admitted = now
		c.conn.mu.Lock()
		ln := &c.conn.learn
		ln.relaxStep(now, c.clock)
		ln.relaxWindow(now, c.clock)
		ln.weigh(c.cost, c.clock)
		until, probe, open := ln.gate(now)
		var wake <-chan struct{}
		if !open && probe == nil {
			ln.budgetSpent(now, c.clock)
			wake = ln.wakeAtAnswer()
		}
		if open {
			learned, gen = learnedSet{ln.policy, ln.win.l, ln.pace}, ln.gen
		}
		c.conn.mu.Unlock()
		if open {
			return learned, gen, nil
		}
		if err := waitGate(c.ctx, c.clock, now, until, probe, wake); err != nil {
			return learned, 0, err
		}
		c.now = c.clock.Now()
	}
}

// admit counts the attempt, whose permits are held, against the budget,
// unless what was learned changed since gate or the budget closed; then
// it cancels the permits and reports false, to start over.
func (c *trip) admit(gen int) bool {
	if c.t.DisableLearning {
		return true
	}
	c.conn.mu.Lock()
	ln := &c.conn.learn
	// A budget's reset may have passed while the permits were taken, or
	// the budget may have come while they were: c.now was read after any
	// wait for them.
	_, _, open := ln.gate(c.now)
	ok := open && ln.gen == gen
	if ok {
		c.probe = ln.admit(c.cost)
		c.seq, c.before = ln.seq, c.conn.inflight
		c.conn.inflight++
	}
	c.conn.mu.Unlock()
	if !ok {
		c.permits.cancel(c.now)
	}
	return ok
}

// unadmit gives back what admit took, for an attempt that is not sent.
func (c *trip) unadmit() {
	if c.t.DisableLearning {
		return
	}
	c.conn.mu.Lock()
	c.conn.learn.unadmit(c.cost, c.probe)
	c.conn.learn.answered()
	c.conn.inflight--
	c.probe = false
	c.conn.mu.Unlock()
}

// acquirePermits takes the attempt's permits, cancelling those it took
// when one fails.
func (c *trip) acquirePermits(learned learnedSet) error {
	c.permits.n = 0
	if c.route >= 0 {
		l, shared, err := c.conn.route(c.t, c.rt, c.route)
		if err != nil {
			return err
		}
		if err := c.hold(l, c.cost, shared); err != nil {
			return err
		}
	}
	for _, l := range learned {
		if l == nil {
			continue
		}
		// A policy the server published may admit less at once than the
		// configured rules: the call takes all of it rather than never go.
		if err := c.hold(l, min(c.cost, l.maxWeight), true); err != nil {
			return err
		}
	}
	if err := c.acquireConn(); err != nil {
		c.permits.cancel(c.now)
		return err
	}
	return nil
}

// hold adds a slot of weight n of l to the permits, or cancels every
// permit when it cannot. shared says that l reads the trip's clock, so
// that c.now serves it.
func (c *trip) hold(l *Limiter, n int, shared bool) error {
	h, err := l.holdAt(c.ctx, n, l.reading(c.now, shared))
	if err != nil {
		c.permits.cancel(c.now)
		return err
	}
	c.permits.add(h, shared)
	if h.waited() {
		c.now = c.clock.Now()
	}
	return nil
}

// acquireConn takes the connection's permit: from the key's limiter of the
// group, or from the Acquirer.
func (c *trip) acquireConn() error {
	var p Permit
	var err error
	switch {
	case c.t.lim != nil:
		c.pauser, c.stats = c.t.lim, c.t.lim
		return c.hold(c.t.lim, c.cost, c.shared)
	case c.t.group != nil:
		// The Group's own acquire keeps the limiter it grants from and
		// sweeps idle keys now and then; a weight needs AcquireN on the
		// key's limiter, which Get keeps for at least a window.
		var l *Limiter
		p, l, err = c.t.group.acquireN(c.ctx, c.key, c.cost)
		if l != nil {
			c.pauser, c.stats = l, l
		}
	default:
		c.pauser = c.t.pauser
		c.stats, _ = c.t.acquirer.(statser)
		if an, ok := c.t.acquirer.(acquirerN); ok {
			p, err = an.AcquireN(c.ctx, c.cost)
		} else {
			p, err = c.t.acquirer.Acquire(c.ctx)
		}
	}
	if err != nil {
		return err
	}
	if p == nil {
		p = noPermit{} // a careless Acquirer; nothing to end
	}
	c.permits.other = p
	c.now = c.clock.Now() // it may have waited
	return nil
}

// acquireFailed returns what RoundTrip returns when acquire fails.
func (c *trip) acquireFailed(err error) (*http.Response, error) {
	if c.held != nil && c.ctx.Err() == nil {
		// The retry cannot be sent (no slot before the deadline, queue
		// full): the throttled response, as it is.
		return c.held, nil
	}
	if errors.Is(err, ErrWouldExceedDeadline) && !isTimeout(err) {
		return nil, &deadlineWaitError{err} // from an Acquirer that wrapped it
	}
	return nil, err
}

// send sends the attempt through Base. On an error it ends the permits:
// Cancel when the request never reached the server, Done otherwise.
func (c *trip) send() (*http.Response, error) {
	r, err := c.attemptRequest()
	if err != nil {
		c.permits.cancel(c.now)
		c.unadmit()
		return nil, err
	}
	c.sent = true
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
func (c *trip) attemptRequest() (*http.Request, error) {
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
func (c *trip) failed(err error) {
	if !c.t.DisableLearning {
		c.conn.mu.Lock()
		c.conn.inflight--
		c.conn.learn.flying -= int64(c.cost)
		c.conn.learn.answered()
		if c.probe {
			c.conn.learn.unadmit(0, true)
			c.probe = false
		}
		c.conn.mu.Unlock()
	}
	now := c.clock.Now()
	if neverSent(err) {
		c.permits.cancel(now)
		return
	}
	c.permits.done(now)
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
func (c *trip) classify(resp *http.Response) verdict {
	now := c.clock.Now()
	srv := now
	hk := kindsOf(resp.Header)
	if hk.needServerTime(resp.StatusCode) {
		if date, ok := firstValue(resp.Header, hdrDate); ok {
			c.conn.mu.Lock()
			srv = c.conn.learn.serverTime(date, now)
			c.conn.mu.Unlock()
		}
		hk.readQuota(resp.Header, srv)
	}
	v := c.t.classify(resp, srv, c.throttles, &hk)
	if refill := c.learn(resp, now, v, &hk); refill > 0 && !v.throttled && v.pause > 0 {
		// A spent quota that refills as it goes frees a call each pace.
		v.pause = refill
	}
	if v.pause > 0 && c.pauser != nil {
		c.pauser.PauseUntil(now.Add(min(v.pause, c.t.maxRetryAfter())))
	}
	// Done after the pause: the call keeps the limiter in use, so a
	// Group cannot have dropped the limiter that was just paused. The
	// response arrived at now: that is when the calls are done.
	c.permits.done(now)
	return v
}

// learn updates what the Transport knows of the server from resp, and
// returns how long a spent quota holds calls back when the server's quota
// refills as it goes (0: until its reset).
func (c *trip) learn(resp *http.Response, now time.Time, v verdict, hk *headerKinds) (refill time.Duration) {
	if c.t.DisableLearning {
		return 0
	}
	c.conn.mu.Lock()
	defer c.conn.mu.Unlock()
	c.conn.inflight--
	ln := &c.conn.learn
	ln.flying -= int64(c.cost)
	ln.configure(c.stats)
	if v.throttled {
		if !v.named || !ln.fitWindow(now, c.admitted, v.wait, c.clock) {
			ln.tighten(now, c.admitted, c.clock)
		}
	} else {
		ln.acceptedLate(now, c.admitted, c.cost, c.clock)
		ln.accepted(now, c.admitted, c.cost, c.clock)
	}
	if hk.quota || hk.policy != nil {
		ln.observe(hk, now, v.throttled, c.probe, c.seq, min(c.before, c.conn.inflight), c.t.maxRetryAfter(), c.clock)
	}
	if c.probe {
		ln.endProbe()
		c.probe = false
	}
	ln.answered()
	return ln.refillWait()
}

// mayRetry reports whether a throttled request is to be sent again, after
// telling OnThrottle.
func (c *trip) mayRetry(resp *http.Response, v verdict) bool {
	limit := c.t.maxRetryAfter()
	if c.t.OnThrottle != nil {
		c.t.OnThrottle(c.req, resp, min(v.pause, limit))
	}
	return v.pause <= limit && c.throttles < c.t.MaxRetries && bodyReplayable(c.req) && !pastDeadline(c.ctx, v.pause)
}

// backoff discards the throttled response and waits before the retry:
// with a Pauser the next acquire waits for the pause, otherwise this
// sleeps for it.
func (c *trip) backoff(resp *http.Response, v verdict) error {
	complete := bufferBody(resp)
	c.throttles++
	c.held = nil
	if c.pauser == nil {
		if err := sleepOn(c.ctx, c.clock, v.pause, nil); err != nil {
			return err
		}
	}
	if complete {
		c.held = resp
	}
	return nil
}

// permitSet is the permits of one attempt: holds of a route's limiter,
// the learned limiters (policy, window, pacing) and the connection's
// *Limiter, or the permit of another Acquirer or a Group.
type permitSet struct {
	hs    [5]permitHold
	n     int
	other Permit // nil: none
}

// permitHold is a hold, and whether its limiter reads the trip's clock, so that
// the trip's readings serve it.
type permitHold struct {
	hold
	shared bool
}

func (s *permitSet) add(h hold, shared bool) {
	s.hs[s.n] = permitHold{h, shared}
	s.n++
}

// done ends every permit with Done at now, a reading of the trip's clock.
func (s *permitSet) done(now time.Time) { s.end(now, true) }

// cancel ends every permit with Cancel.
func (s *permitSet) cancel(now time.Time) { s.end(now, false) }

func (s *permitSet) end(now time.Time, done bool) {
	for i := range s.hs[:s.n] {
		h := &s.hs[i]
		h.release(h.l.reading(now, h.shared), done)
	}
	s.n = 0 // what is left past n is never read again
	switch {
	case s.other == nil:
	case done:
		s.other.Done()
	default:
		s.other.Cancel()
	}
	s.other = nil
}

type noPermit struct{}

func (noPermit) Done()   {}
func (noPermit) Cancel() {}

// isTimeout reports whether err itself has the methods of a timeout that
// is not worth retrying, as the core's *DeadlineError has.
func isTimeout(err error) bool {
	to, ok := err.(interface{ Timeout() bool })
	_, nr := err.(interface{ NonRetriable() })
	return ok && to.Timeout() && nr
}

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
