package limiter

import "time"

// A throttled response that names its wait (a Retry-After) tells the time
// scale of the server's rule: a server that refused after f calls in the
// last wait, and asks for that wait, counts about f calls per wait, as
// GitHub's secondary limit does. The Transport learns that rule, a window
// of f calls per wait, instead of slowing its pacing to the configured
// pace, which may be many times slower than the server allows (100 per
// minute is one call each 600 ms; GitHub's secondary limit takes 5 a
// second). It only holds calls back, so the configured rules still bound
// everything. A window quiet for quietSteps of its lengths admits one
// call more, as a try; a refusal fits it again; once it admits as many
// as the configured rule over its length, it is dropped.

// winLearn is the window learned from named waits. Guarded by the
// connState's mutex, as the learner is.
type winLearn struct {
	l       *Limiter // nil: none learned
	n       int
	w       time.Duration
	changed time.Time // of the last fit or try
	refused time.Time // when the call whose refusal fitted n was admitted
	fitting bool      // n was fitted, and grows by the calls accepted late
	fitted  int       // the calls the fit counted, which may be none
}

// fitWindow learns from a throttle at now, of a call admitted at
// admitted, whose server named wait, and reports whether it did; when it
// did not, the pacing learns instead. A call admitted before the last fit
// was admitted by the old window, and teaches nothing new.
func (ln *learner) fitWindow(now, admitted time.Time, wait time.Duration, clock Clock) bool {
	if ln.step <= 0 || wait <= 0 || wait > ln.cfg.Window/2 {
		return false
	}
	if ln.win.l != nil && admitted.Before(ln.win.changed) {
		return true
	}
	w := wait
	n := 0
	for i := range ln.histN {
		if now.Sub(ln.histAt((ln.histNext-1-i+histSize)%histSize)) >= w {
			break
		}
		n++
	}
	fitting := true
	if ln.win.l != nil && n >= ln.win.n && w <= ln.win.w {
		n, fitting = max(ln.win.n-1, 1), false // the learned window was too loose
	}
	ln.setWindow(now, max(n, 1), w, clock)
	ln.win.refused, ln.win.fitting, ln.win.fitted = admitted, fitting, n
	return true
}

// acceptedLate grows a fitted window by a call of weight n that the
// server accepted, admitted at admitted: one admitted no later than the
// refused call, whose answer came after the refusal, was in the server's
// window too.
func (ln *learner) acceptedLate(now, admitted time.Time, n int, clock Clock) {
	if ln.win.l == nil || !ln.win.fitting || admitted.After(ln.win.refused) {
		return
	}
	ln.win.fitted += n
	ln.setWindow(now, max(ln.win.fitted, 1), ln.win.w, clock)
	ln.win.fitting = true
}

// setWindow makes the learned window n calls per w, or drops it when the
// configured rule implies it.
func (ln *learner) setWindow(now time.Time, n int, w time.Duration, clock Clock) {
	ln.gen++
	n = max(n, ln.heaviest)
	ln.win.n, ln.win.w, ln.win.changed, ln.win.fitting = n, w, now, false
	if implied(ln.cfg.Limit, ln.cfg.Window, policy{q: n, w: w}) {
		ln.win.l = nil
		return
	}
	l, err := New(n, w, WithClock(clock))
	if err != nil {
		l = nil
	}
	ln.win.l = l
}

// relaxWindow admits one call more per window once the learned window has
// been quiet for quietSteps of its lengths.
func (ln *learner) relaxWindow(now time.Time, clock Clock) {
	if ln.win.l == nil || now.Sub(ln.win.changed) < quietSteps*ln.win.w {
		return
	}
	ln.setWindow(now, ln.win.n+1, ln.win.w, clock)
}
