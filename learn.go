package limiter

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// How the Transport learns a server, one connection key at a time.
//
// The configured rules are the user's model of the server; the server may
// count differently (a leaky bucket, a sliding counter, a fixed window)
// and usually says so in its responses. Three things are learned, each of
// which only ever holds calls back, so the configured rules stay the
// loosest the Transport can be (a fourth, the window of a named wait, is
// in learnwindow.go):
//
//   - The budget: a response that says r calls remain before a reset lets
//     no more than r calls start before that reset, less the calls that
//     the count may not include: those admitted after the counted one,
//     and those in flight when it was admitted and still in flight. Counts
//     are read in the order their calls were admitted, so that an answer
//     that overtakes another does not give calls back; but since the
//     count of a window that resets only falls, the fewest count seen
//     lacks at most the calls still in flight, and each answer that
//     comes back gives its call back to the budget. A call held back by
//     a budget that calls in flight spent waits for their answers as
//     well as for the reset. Once a reset has
//     passed the server's state is unknown, so one call goes first (a
//     probe) and the others wait for its answer. A quota that was spent
//     before its reset and, right after it, refuses or leaves fewer calls
//     than the period before (a sliding counter, whose previous window
//     still weighs) does not reset: from then on a spent count holds calls
//     back for one pace (window/limit, or the learned pacing's every)
//     instead of until the reset.
//   - The policy: a RateLimit-Policy quota that the configured rules do
//     not imply becomes a rule of its own.
//   - The pacing: a throttled response for a call the rules admitted says
//     the rules are too loose for this server. The Transport then adds a
//     bucket rule, WithBucket(burst, every), with every the configured
//     pace (window/limit) and burst fitted to the calls the server
//     accepted: the level that a leaky bucket draining one call each
//     every would have held when the server refused, counting the calls
//     sent before the refused one whose answers come after it. Refused
//     with that bucket all but empty, the server's own pace is slower:
//     every grows by a quarter. Another throttle lowers the burst (to the
//     fitted level, else by half, and at 1 slows every); so does a budget
//     that the paced calls spend before its reset. Without throttles the
//     pacing relaxes one step per configured window up to just below the
//     smallest burst the server refused; each step past it, and each step
//     back towards the configured pace, waits for ten quiet windows (twice
//     as many after each step that earned a refusal). Back at the
//     configured rules, the pacing is dropped.
//
// Pacing needs the configured pace, which it reads from the connection's
// limiter (Stats); an Acquirer without Stats learns the budget and the
// policy only.

// histSize is how many accepted calls a learner remembers to fit a bucket:
// the largest burst it can fit.
const histSize = 32

// quietSteps is how many relax periods without a throttle it takes to
// relax past a burst that the server refused before.
const quietSteps = 10

// learner is what a Transport learned about the server of one connection
// key. Its fields are guarded by the connState's mutex.
type learner struct {
	// The budget.
	left     int64     // calls that may still start before resetAt
	resetAt  time.Time // zero: no budget known
	probe    chan struct{}
	probing  bool          // a reset passed: the next call goes alone
	seq      int64         // the weight of the calls ever admitted
	countSeq int64         // seq when the call whose count set left was admitted
	gen      int           // counts the changes of policy and pace
	flying   int64         // the weight of the calls admitted and not yet answered
	wake     chan struct{} // closed at the next answer, for calls the budget holds back
	least    int64         // the fewest calls left that a count said since the last probe
	leastOK  bool          // least holds a count

	// The policy.
	policyHdr  string   // the RateLimit-Policy it was made from
	policy     *Limiter // nil: none stricter than the rules
	policyFull int      // its Remaining when new

	// The window learned from named waits; see learnwindow.go.
	win winLearn

	// The pacing.
	pace        *Limiter // nil: none learned
	burst       int
	every       time.Duration
	base        time.Duration // the configured pace, window/limit
	relax       time.Duration // the configured window: one relax step each
	limit       int           // the configured limit
	ceiling     int           // the smallest burst the server refused
	heaviest    int           // the heaviest call seen: the pacing's burst is never less
	changed     time.Time     // of the last tighten or relax step
	throttled   time.Time     // of the last tighten: calls admitted before it teach nothing new
	refused     time.Time     // when the call whose refusal fitted burst was admitted
	fitting     bool          // burst was fitted to the calls the server accepted
	fitted      int           // the level burst was fitted to, with the calls accepted late
	slowed      time.Duration // what the last tighten added to every
	fitCap      int           // the burst a fit may grow to
	probed      time.Time     // when relaxing last went past the ceiling, until a throttle
	tried       time.Time     // when relaxing last went past the ceiling, kept
	quietMul    int           // quietSteps is multiplied by this, doubled by each failed try
	refusedLast bool          // the latest count came with a refusal

	// The connection's first rule, read once, and its pace, window/limit;
	// 0 until read, or when the Acquirer does not tell.
	cfg  Stats
	step time.Duration

	// Whether the quota refills as it goes (a sliding counter), which a
	// reset that does not reset shows; then a spent quota holds calls back
	// for one pace, not until the reset.
	refill bool
	resets bool  // a spent quota was seen to reset: its counts only fall till then
	peak   int64 // the most calls left that a count said since the last reset
	spent  bool  // since the last reset, a count left none, or the calls spent them

	// The server's clock: the largest Date - local seen, a lower bound of
	// the server's time minus ours, since Date is truncated to the second
	// and made before the response arrives.
	skew     time.Duration
	skewOK   bool
	agree    bool // the latest Date agrees with the local clock
	lastDate string

	hist      [histSize]time.Duration // Done instants of accepted calls since histEpoch, a ring
	histEpoch time.Time
	histN     int
	histNext  int
}

// gate returns, when the budget lets no call start now, what to wait for:
// a time (the reset) or a channel (the probe's response); otherwise it
// reports open. Once a reset has passed the server's state is unknown:
// the gate is open for one call, the probe, which admit elects.
func (ln *learner) gate(now time.Time) (until time.Time, probe <-chan struct{}, open bool) {
	if !ln.resetAt.IsZero() && !now.Before(ln.resetAt) {
		ln.resetAt = time.Time{}
		ln.probing = true
	}
	switch {
	case ln.probe != nil:
		return time.Time{}, ln.probe, false
	case !ln.resetAt.IsZero() && ln.left <= 0:
		return ln.resetAt, nil, false
	}
	return time.Time{}, nil, true
}

// wakeAtAnswer returns a channel closed when the next call in flight is
// answered, or nil if none is in flight or the quota has not been seen to
// reset as a fixed window does. A budget spent only by the calls in
// flight may reopen then: their answers show they were in the count. (A
// sliding counter's counts are rounded and rise as its previous window
// fades; there a spent budget waits for its reset, or its pace.)
func (ln *learner) wakeAtAnswer() <-chan struct{} {
	if ln.flying <= 0 || !ln.resets || ln.refill {
		return nil
	}
	if ln.wake == nil {
		ln.wake = make(chan struct{})
	}
	return ln.wake
}

// answered wakes the calls that wait for an answer.
func (ln *learner) answered() {
	if ln.wake != nil {
		close(ln.wake)
		ln.wake = nil
	}
}

// budgetSpent is told that the budget stopped a call before its reset.
// While pacing, that means the pace spends the server's quota faster than
// the server gives it back (a sliding counter whose previous window still
// weighs): the pace slows by a quarter, at most once a window, as after a
// throttle, but without the refusal.
func (ln *learner) budgetSpent(now time.Time, clock Clock) {
	if ln.pace == nil || ln.refusedLast || now.Sub(ln.throttled) < ln.relax {
		// A refusal set the budget, and slowed the pace already, or
		// something slowed it less than a window ago.
		return
	}
	ln.every += ln.every / 4
	ln.changed, ln.throttled = now, now
	ln.repace(clock)
}

// repace replaces the pacing limiter after a change of burst or every;
// the new one starts where the old one was, not empty.
func (ln *learner) repace(clock Clock) {
	ln.gen++
	old := ln.pace
	ln.pace = ln.newPace(clock)
	if old == nil || ln.pace == nil {
		return
	}
	for range max(0, old.Stats().Limit-old.Remaining()) {
		ln.pace.Allow()
	}
}

// admit counts a call of weight n that the gate let through against the
// budget, and reports whether it is the probe. The gate must be open.
func (ln *learner) admit(n int) (isProbe bool) {
	ln.seq += int64(n)
	ln.flying += int64(n)
	if !ln.resetAt.IsZero() {
		ln.left -= int64(n)
	}
	if ln.probing {
		ln.probing = false
		ln.probe = make(chan struct{})
		return true
	}
	return false
}

// unadmit gives back what admit took, for a call that was not sent.
func (ln *learner) unadmit(n int, wasProbe bool) {
	ln.flying -= int64(n)
	if !ln.resetAt.IsZero() {
		ln.left += int64(n)
	}
	if wasProbe {
		ln.endProbe()
		ln.probing = true // the next call probes instead
	}
}

// endProbe lets the calls that waited for the probe go.
func (ln *learner) endProbe() {
	if ln.probe != nil {
		close(ln.probe)
		ln.probe = nil
	}
}

// observe reads the budget and the policy from a response: hk holds the
// count it read. now is the local time it arrived, seq the learner's seq
// just after the call was admitted, others the calls in flight when it
// was, refused whether the server refused the call; a reset further than
// limit counts as limit.
func (ln *learner) observe(hk *headerKinds, now time.Time, refused, probe bool, seq int64, others int, limit time.Duration, clock Clock) {
	if hk.counted {
		ln.count(hk, now, refused, probe, seq, others, limit)
	}
	if vs := hk.policy; len(vs) > 0 && vs[0] != ln.policyHdr {
		ln.policyHdr = vs[0]
		ln.policy = policyLimiter(policies(vs), ln.cfg, ln.step > 0, clock)
		ln.gen++
		if ln.policy != nil {
			ln.policyFull = ln.policy.Remaining()
			// The calls made in the policy's window count in it.
			w := ln.policy.Stats().Window
			for i := range ln.histN {
				if t := ln.histAt((ln.histNext - 1 - i + histSize) % histSize); now.Sub(t) >= w || !ln.policy.Allow() {
					break
				}
			}
		}
	}
}

// count takes the budget from a response's count of calls left: see the
// top of this file. probe says whether the response answers the first
// call after a reset.
func (ln *learner) count(hk *headerKinds, now time.Time, refused, probe bool, seq int64, others int, limit time.Duration) {
	if probe {
		// A quota that was spent before the reset and right after it
		// refuses, or leaves fewer calls than the reset before it did
		// (besides those of the calls in flight), did not reset: it
		// refills as it goes.
		if ln.spent && (refused || hk.left+int64(others) < ln.peak) {
			ln.refill = true
		} else if ln.spent {
			ln.resets = true
		}
		ln.peak, ln.spent = 0, false
	}
	ln.peak = max(ln.peak, hk.left)
	ln.spent = ln.spent || hk.left <= 0
	if probe || !ln.leastOK || hk.left < ln.least {
		ln.least, ln.leastOK = hk.left, true
	}
	if seq < ln.countSeq {
		// A later call's count came first. This one still tells that
		// its call was counted: it is no longer among those that the
		// fewest count may lack.
		if !ln.resetAt.IsZero() && ln.refillWait() == 0 {
			ln.left = ln.least - ln.flying
		}
		return
	}
	ln.countSeq = seq
	// Perhaps not in the count: the calls admitted after this one, and
	// those in flight when it was, whatever the order in which the server
	// saw them and their answers came back.
	ln.left, ln.refusedLast = hk.left-(ln.seq-seq)-int64(others), refused
	if ln.refillWait() == 0 {
		// Within a window that resets, the count only falls: the fewest
		// count seen lacks at most the calls still in flight. A call
		// answered since was in it, or would have said fewer. Counts read
		// in the order of admission can say more, when the server saw
		// the calls in another order.
		ln.left = ln.least - ln.flying
	}
	ln.spent = ln.spent || ln.left <= 0
	reset := min(hk.reset, limit)
	if d := ln.refillWait(); d > 0 && !refused {
		// Its reset is no reset: a call frees each pace, and right after
		// the reset the count is at its highest.
		reset = d
	}
	ln.resetAt = now.Add(reset)
	ln.probing = false
}

// refillWait returns, for a quota that refills as it goes, how long a
// spent quota holds calls back: one pace. Otherwise it returns 0, and a
// spent quota waits for its reset.
func (ln *learner) refillWait() time.Duration {
	switch {
	case !ln.refill:
		return 0
	case ln.pace != nil:
		return ln.every
	}
	return ln.step
}

// configure remembers the connection's first rule, once, and the pace it
// sets: window/limit.
func (ln *learner) configure(s statser) {
	if ln.step > 0 || s == nil {
		return
	}
	if ln.cfg = s.Stats(); ln.cfg.Limit > 0 && ln.cfg.Window > 0 {
		ln.step = max(ln.cfg.Window/time.Duration(ln.cfg.Limit), 1)
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

// serverTime returns the server's time when a response whose Date is v
// arrived at local time now. Absolute times in the headers (an HTTP-date,
// a reset in Unix seconds) are read against it, so that a client whose
// clock is off still waits as long as the server means. While the Dates
// agree with the local clock to within their resolution of a second, the
// local clock is the more precise of the two, and it is now. Otherwise it
// is the latest bound from below of the server's clock that the Dates give
// (each is truncated to the second, and made before the response
// arrived), so that a wait read against it is never shorter than the
// server's. A response without a Date needs no call: its server's time
// is now.
func (ln *learner) serverTime(v string, now time.Time) time.Time {
	if v != ln.lastDate {
		// The first response of each second is the best sample of it.
		ln.lastDate = v
		if t, err := http.ParseTime(v); err == nil {
			d := t.Sub(now)
			ln.agree = d > -time.Second-dateSlack && d <= dateSlack
			// A sample that disagrees with the bound by more than a second
			// means that a clock was set: start again from it.
			if !ln.skewOK || d > ln.skew || d < ln.skew-2*time.Second {
				ln.skew, ln.skewOK = d, true
			}
		}
	}
	if !ln.skewOK || ln.agree {
		return now
	}
	return now.Add(ln.skew)
}

// dateSlack is how far a Date may lie outside the second before the
// response arrived, for a round trip and a server's rounding, and still
// agree with the local clock.
const dateSlack = 100 * time.Millisecond

// accepted remembers n calls that the server accepted, done at now, of
// a call admitted at admitted. A call admitted no later than the refused
// one whose burst was fitted, but whose answer came after the refusal,
// was in the server's bucket too: the burst grows by it.
func (ln *learner) accepted(now, admitted time.Time, n int, clock Clock) {
	if ln.fitting && ln.pace != nil && !admitted.After(ln.refused) && ln.burst < ln.limit {
		ln.fitted += n
		ln.burst = min(max(ln.fitted, 1), ln.fitCap)
		ln.ceiling = max(ln.ceiling, ln.burst+1)
		if ln.burst > 1 {
			// The bucket was not empty after all: the pace stands.
			ln.every -= ln.slowed
			ln.slowed = 0
		}
		ln.pace = ln.newPace(clock)
		ln.gen++
	}
	if ln.histN == 0 {
		ln.histEpoch = now
	}
	for range min(n, histSize) {
		ln.hist[ln.histNext] = now.Sub(ln.histEpoch)
		ln.histNext = (ln.histNext + 1) % histSize
		ln.histN = min(ln.histN+1, histSize)
	}
}

// histAt returns the i-th slot of the ring as an instant.
func (ln *learner) histAt(i int) time.Time { return ln.histEpoch.Add(ln.hist[i]) }

// level returns the number of calls a leaky bucket that drains one call
// each every would hold at now, after the accepted calls remembered.
func (ln *learner) level(now time.Time, every time.Duration) int {
	lvl := 0.0
	var prev time.Time
	for i := range ln.histN {
		t := ln.histAt((ln.histNext - ln.histN + i + histSize) % histSize)
		if i > 0 {
			lvl = max(0, lvl-float64(t.Sub(prev))/float64(every))
		}
		lvl++
		prev = t
	}
	if ln.histN > 0 {
		lvl = max(0, lvl-float64(now.Sub(prev))/float64(every))
	}
	// Rounded: the server decided a little before the answer arrived.
	return int(lvl + 0.5)
}

// tighten learns from a throttled response at now for a call admitted at
// admitted: see the comment at the top of this file. A call admitted
// before the last change was admitted by the old pacing, and teaches
// nothing new.
func (ln *learner) tighten(now, admitted time.Time, clock Clock) {
	cfg := ln.cfg
	if ln.step <= 0 || admitted.Before(ln.throttled) {
		return
	}
	prev, first := ln.burst, ln.pace == nil
	if !ln.probed.IsZero() && now.Sub(ln.probed) < 2*ln.relax {
		// Relaxing past the refused burst earned a refusal: wait twice as
		// long before the next try.
		ln.quietMul = min(2*ln.quietMul, 64)
	}
	ln.probed = time.Time{}
	if first {
		ln.quietMul = 1
		ln.base = ln.step
		ln.every, ln.relax, ln.limit = ln.base, cfg.Window, cfg.Limit
	}
	ln.refused, ln.fitting, ln.slowed = admitted, false, 0
	switch f := ln.level(now, ln.every); {
	case f < ln.burst || first:
		ln.burst = min(max(f, 1), ln.limit)
		ln.fitting, ln.fitted = true, f
		ln.fitCap = ln.limit
		if !first {
			ln.fitCap = max(prev-1, 1) // prev was refused
		}
		if f <= 1 {
			// Refused with the bucket all but empty: the server's pace
			// is slower than this one.
			ln.slowed = ln.every / 4
		}
	case ln.burst > 1:
		ln.burst /= 2
	default:
		ln.slowed = ln.every / 4
	}
	ln.every += ln.slowed
	if first {
		ln.ceiling = ln.burst + 1 // the server refused the call after them
	} else {
		ln.ceiling = max(min(ln.ceiling, prev), ln.burst+1)
	}
	ln.changed, ln.throttled = now, now
	ln.pace = ln.newPace(clock)
	ln.gen++
}

// relaxStep loosens the pacing by one step when a relax period has passed
// without a throttle.
func (ln *learner) relaxStep(now time.Time, clock Clock) {
	if ln.pace == nil || now.Sub(ln.changed) < ln.relax {
		return
	}
	since := ln.throttled
	if ln.tried.After(since) {
		since = ln.tried
	}
	quiet := now.Sub(since) >= time.Duration(quietSteps*ln.quietMul)*ln.relax
	switch {
	case ln.every > ln.base && quiet:
		ln.every = max(ln.base, ln.every-ln.every/5)
	case ln.every > ln.base:
		return
	case ln.burst+1 < ln.ceiling || quiet:
		if ln.burst+1 >= ln.ceiling {
			ln.probed, ln.tried = now, now // past a burst the server refused before
		}
		ln.burst++
		ln.ceiling = max(ln.ceiling, ln.burst+1)
	default:
		// Just below a burst the server refused, and not quiet for long
		// enough to try it again.
		return
	}
	ln.changed, ln.fitting = now, false
	if ln.burst >= ln.limit && ln.every <= ln.base {
		ln.pace = nil // back at the configured rules
		ln.gen++
		return
	}
	ln.repace(clock)
}

// weigh is told of a call of weight n about to pass the learned limiters.
// A pacing is fitted to the calls the server accepted, which may all have
// been lighter: its burst grows to admit n, so that what was learned never
// makes impossible a call that the configured rules admit.
func (ln *learner) weigh(n int, clock Clock) {
	if n <= ln.heaviest {
		return
	}
	ln.heaviest = n
	if ln.pace != nil && ln.pace.maxWeight < n {
		ln.repace(clock)
	}
}

// newPace returns the limiter of the learned pacing, whose burst admits
// the heaviest call seen.
func (ln *learner) newPace(clock Clock) *Limiter {
	return paceLimiter(max(ln.burst, ln.heaviest), ln.every, ln.limit, ln.relax, clock)
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
	if ln.win.l != nil && !fresh(ln.win.l, ln.win.n) {
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

// waitGate waits for what gate named, or for ctx; also, before until, for
// wake, when not nil.
func waitGate(ctx context.Context, clock Clock, now, until time.Time, probe, wake <-chan struct{}) error {
	if probe != nil {
		select {
		case <-probe:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	d := until.Sub(now)
	if pastDeadline(ctx, d) {
		err := fmt.Errorf("limiter: the server's quota resets in %v, after the context deadline: %w", d, ErrWouldExceedDeadline)
		return &deadlineWaitError{err}
	}
	return sleepOn(ctx, clock, d, wake)
}
