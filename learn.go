package limiter

import (
	"context"
	"net/http"
	"time"
)

// How the Transport learns a server, one connection key at a time.
//
// The configured rules are the user's model of the server; the server may
// count differently (a leaky bucket, a sliding counter, a fixed window)
// and usually says so in its responses. Three things are learned, each of
// which only ever holds calls back, so the configured rules stay the
// loosest the Transport can be:
//
//   - The budget: a response that says r calls remain before a reset lets
//     no more than r calls start before that reset, less the calls already
//     in flight, which the server had not counted yet. The newest response
//     wins: it saw the server's latest count. Once a reset has passed
//     the server's state is unknown, so one call goes first (a probe) and
//     the others wait for its response.
//   - The policy: a RateLimit-Policy quota that the configured rules do
//     not imply becomes a rule of its own.
//   - The pacing: a throttled response for a call the rules admitted says
//     the rules are too loose for this server. The Transport then adds a
//     bucket rule, WithBucket(burst, every), with every the configured
//     pace (window/limit) and burst fitted to the calls the server
//     accepted: the level a leaky bucket draining one call each every
//     would have held when the server refused. Another throttle lowers the
//     burst (to the fitted level, else by half) and, at burst 1, slows
//     every by a quarter. Without throttles the pacing relaxes one step
//     per configured window, never past a burst that was throttled
//     before until ten windows pass quietly, and is dropped once it is
//     back at the configured rules.
//
// Pacing needs the configured pace, which it reads from the connection's
// limiter (Stats); an Acquirer without Stats learns the budget and the
// policy only.

// histSize is how many accepted calls a learner remembers to fit a bucket.
const histSize = 64

// quietSteps is how many relax periods without a throttle it takes to
// relax past a burst that the server refused before.
const quietSteps = 10

// learner is what a Transport learned about the server of one connection
// key. Its fields are guarded by the connState's mutex.
type learner struct {
	// The budget.
	left    int64     // calls that may still start before resetAt
	resetAt time.Time // zero: no budget known
	probe   chan struct{}
	probing bool // a reset passed: the next call goes alone

	// The policy.
	policyHdr  string   // the RateLimit-Policy it was made from
	policy     *Limiter // nil: none stricter than the rules
	policyFull int      // its Remaining when new

	// The pacing.
	pace    *Limiter // nil: none learned
	burst   int
	every   time.Duration
	base    time.Duration // the configured pace, window/limit
	relax   time.Duration // the configured window: one relax step each
	limit   int           // the configured limit
	ceiling int           // the smallest burst the server refused
	changed time.Time     // of the last tighten or relax step

	hist     [histSize]time.Time // Done instants of accepted calls, a ring
	histN    int
	histNext int
}

// gate returns, when the budget lets no call start now, what to wait for:
// a time (the reset) or a channel (the probe's response). A call that may
// start reports ok. When a reset has passed and the state is unknown, the
// first caller becomes the probe, and gate reports that.
func (ln *learner) gate(now time.Time) (until time.Time, probe <-chan struct{}, isProbe, ok bool) {
	if !ln.resetAt.IsZero() && !now.Before(ln.resetAt) {
		ln.resetAt = time.Time{}
		ln.probing = true
	}
	switch {
	case ln.probe != nil:
		return time.Time{}, ln.probe, false, false
	case ln.probing:
		ln.probe = make(chan struct{})
		ln.probing = false
		return time.Time{}, nil, true, true
	case !ln.resetAt.IsZero() && ln.left <= 0:
		return ln.resetAt, nil, false, false
	}
	return time.Time{}, nil, false, true
}

// take counts a call of weight n against the budget.
func (ln *learner) take(n int) {
	if !ln.resetAt.IsZero() {
		ln.left -= int64(n)
	}
}

// endProbe lets the calls that waited for the probe go.
func (ln *learner) endProbe() {
	if ln.probe != nil {
		close(ln.probe)
		ln.probe = nil
	}
}

// observe reads the budget and the policy from a response. now is the
// local time it arrived, srv the server's (from Date), others the calls
// of this key in flight besides this one.
func (ln *learner) observe(h http.Header, now, srv time.Time, others int, cfg Stats, hasCfg bool, clock Clock) {
	if left, reset, ok := quotaLeft(h, srv); ok {
		ln.left = left - int64(others)
		ln.resetAt = now.Add(reset)
		ln.probing = false
	}
	if vs := h[hdrRateLimitPolicy]; len(vs) > 0 && vs[0] != ln.policyHdr {
		ln.policyHdr = vs[0]
		ln.policy = policyLimiter(policies(vs), cfg, hasCfg, clock)
		if ln.policy != nil {
			ln.policyFull = ln.policy.Remaining()
		}
	}
}

// policyLimiter returns a limiter of the policies that the configured
// rule does not imply, or nil if there are none.
func policyLimiter(ps []policy, cfg Stats, hasCfg bool, clock Clock) *Limiter {
	var l *Limiter
	var opts []Option
	for _, p := range ps {
		if hasCfg && implied(cfg.Limit, cfg.Window, p) {
			continue
		}
		if l == nil {
			var err error
			if l, err = New(p.q, p.w, WithClock(clock)); err != nil {
				l = nil
			}
			opts = []Option{WithClock(clock)}
			continue
		}
		// A later policy joins the first one's rules when it adds to them.
		if m, err := New(l.Stats().Limit, l.Stats().Window, append(opts, WithWindow(p.q, p.w))...); err == nil {
			opts = append(opts, WithWindow(p.q, p.w))
			l = m
		}
	}
	return l
}

// implied reports whether limit calls per window already keep a client
// within p: they allow at most limit*ceil(p.w/window) calls in any p.w.
func implied(limit int, window time.Duration, p policy) bool {
	if limit <= 0 || window <= 0 {
		return false
	}
	k := int64((p.w-1)/window) + 1
	return int64(limit) <= int64(p.q)/k
}

// accepted remembers n calls that the server accepted, done at now.
func (ln *learner) accepted(now time.Time, n int) {
	for range min(n, histSize) {
		ln.hist[ln.histNext] = now
		ln.histNext = (ln.histNext + 1) % histSize
		ln.histN = min(ln.histN+1, histSize)
	}
}

// level returns the number of calls a leaky bucket that drains one call
// each every would hold at now, after the accepted calls remembered.
func (ln *learner) level(now time.Time, every time.Duration) int {
	lvl := 0.0
	var prev time.Time
	for i := range ln.histN {
		t := ln.hist[(ln.histNext-ln.histN+i+histSize)%histSize]
		if i > 0 {
			lvl = max(0, lvl-float64(t.Sub(prev))/float64(every))
		}
		lvl++
		prev = t
	}
	if ln.histN > 0 {
		lvl = max(0, lvl-float64(now.Sub(prev))/float64(every))
	}
	return int(lvl)
}

// tighten learns from a throttled response at now for a call admitted at
// admitted: see the comment at the top of this file. A call admitted
// before the last change was admitted by the old pacing, and teaches
// nothing new.
func (ln *learner) tighten(now, admitted time.Time, cfg Stats, clock Clock) {
	if cfg.Limit <= 0 || cfg.Window <= 0 || admitted.Before(ln.changed) {
		return
	}
	prev := ln.burst
	if ln.pace == nil {
		ln.base = max(cfg.Window/time.Duration(cfg.Limit), 1)
		ln.every, ln.relax, ln.limit = ln.base, cfg.Window, cfg.Limit
		ln.burst = min(max(ln.level(now, ln.every), 1), cfg.Limit)
		ln.ceiling = ln.burst + 1
	} else {
		switch f := ln.level(now, ln.every); {
		case f < ln.burst:
			ln.burst = max(f, 1)
		case ln.burst > 1:
			ln.burst /= 2
		default:
			ln.every += ln.every / 4
		}
		ln.ceiling = min(ln.ceiling, max(prev, ln.burst+1))
	}
	ln.changed = now
	ln.pace = paceLimiter(ln.burst, ln.every, ln.limit, ln.relax, clock)
}

// relaxStep loosens the pacing by one step when a relax period has passed
// without a throttle.
func (ln *learner) relaxStep(now time.Time, clock Clock) {
	if ln.pace == nil || now.Sub(ln.changed) < ln.relax {
		return
	}
	switch {
	case ln.every > ln.base:
		ln.every = max(ln.base, ln.every-ln.every/5)
	case ln.burst+1 < ln.ceiling || now.Sub(ln.changed) >= quietSteps*ln.relax:
		ln.burst++
		ln.ceiling = max(ln.ceiling, ln.burst+1)
	}
	ln.changed = now
	if ln.burst >= ln.limit && ln.every <= ln.base {
		ln.pace = nil // back at the configured rules
		return
	}
	old := ln.pace
	ln.pace = paceLimiter(ln.burst, ln.every, ln.limit, ln.relax, clock)
	// The new pacing starts where the old one was, not empty.
	for range max(0, old.Stats().Limit-old.Remaining()) {
		ln.pace.Allow()
	}
}

// paceLimiter returns the limiter of a learned pacing: burst calls at
// once, then one each every, within limit per window.
func paceLimiter(burst int, every time.Duration, limit int, window time.Duration, clock Clock) *Limiter {
	l, err := New(limit, window, WithBucket(burst, every), WithClock(clock))
	if err != nil {
		// Without bucket rules: the same burst, at the same long-run pace.
		l, err = New(burst, time.Duration(burst)*every, WithClock(clock))
	}
	if err != nil {
		return nil
	}
	return l
}

// idle reports whether the learner holds nothing that still matters at
// now: no budget, no probe, and pacing and policy that hold no call.
func (ln *learner) idle(now time.Time) bool {
	if ln.probe != nil || !ln.resetAt.IsZero() && now.Before(ln.resetAt) {
		return false
	}
	if ln.pace != nil && now.Sub(ln.changed) < quietSteps*ln.relax {
		return false
	}
	return ln.policy == nil || fresh(ln.policy, ln.policyFull)
}

// fresh reports whether l holds no call: nothing in any window, nothing in
// flight, nobody waiting, no pause. full is l's Remaining when it was new.
func fresh(l *Limiter, full int) bool {
	st := l.Stats()
	return st.InFlight == 0 && st.Waiting == 0 && st.PausedUntil.IsZero() && l.Remaining() >= full
}

// waitGate waits for what gate named, or for ctx.
func waitGate(ctx context.Context, clock Clock, now, until time.Time, probe <-chan struct{}) error {
	if probe != nil {
		select {
		case <-probe:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return sleepOn(ctx, clock, until.Sub(now))
}
