package limiter

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"time"
)

// verdict is what a response says about the server's quota.
type verdict struct {
	throttled bool          // the server refused the call for its quota
	wait      time.Duration // how long the server asks to wait, uncapped; a backoff when it named none
	named     bool          // the server (or Classify) named wait, rather than a backoff
	pause     time.Duration // how long to hold every call back: wait, or a spent quota's reset if longer
}

// classify reads resp: whether the server throttled the call, and how
// long the server asks every call to wait. now is the local time at which
// the response arrived, srv the server's time then, against which
// absolute times in the headers are read; attempt counts the throttled
// attempts of this request before it, for the backoff.
//
// Throttled, by default: 429; 503 with a Retry-After; 403 with a
// Retry-After or a spent-quota header (GitHub's secondary and primary
// limits). Classify, when set, is asked first.
func (t *Transport) classify(resp *http.Response, srv time.Time, attempt int, hk *headerKinds) verdict {
	h := resp.Header
	var v verdict
	if t.Classify != nil && resp.StatusCode >= 400 {
		if ok, d := t.askClassify(resp); ok {
			v = verdict{throttled: true, wait: d, named: d > 0}
		}
	}
	if !v.throttled && !hk.needServerTime(resp.StatusCode) {
		return v // most responses: no header work
	}
	var reset time.Duration
	var spent bool
	if hk.quota && !(hk.counted && hk.left > 0) {
		// Some count may be zero: when the quota is spent, and until when.
		reset, spent = quotaReset(h, srv, maxDuration)
	}
	if !v.throttled {
		v = defaultVerdict(resp.StatusCode, h, srv, spent)
	}
	if v.throttled && !v.named {
		if d, ok := retryAfter(h, srv, maxDuration); ok {
			v.wait, v.named = d, true
		} else if spent && reset > 0 {
			v.wait, v.named = reset, true
		} else {
			v.wait = retryBackoff(attempt, t.maxRetryAfter())
		}
	}
	v.pause = v.wait
	if spent {
		v.pause = max(v.pause, reset)
	}
	return v
}

// defaultVerdict classifies a response by the default rules; the wait is
// filled in by classify.
func defaultVerdict(status int, h http.Header, srv time.Time, spent bool) verdict {
	switch status {
	case http.StatusTooManyRequests:
		return verdict{throttled: true}
	case http.StatusServiceUnavailable:
		// A 503 is throttling only when the server says when to come back.
		_, ok := retryAfter(h, srv, maxDuration)
		return verdict{throttled: ok}
	case http.StatusForbidden:
		_, ok := retryAfter(h, srv, maxDuration)
		return verdict{throttled: ok || spent}
	}
	return verdict{}
}

// headerKinds says which rate limit headers a response has, from a few
// lookups made once, so that the rest of the work is skipped when there
// are none.
type headerKinds struct {
	quota  bool     // RateLimit, RateLimit-Remaining or X-RateLimit-Remaining
	policy []string // RateLimit-Policy's field lines
	fields quotaFields

	// What quotaLeft read, when quota: the fewest calls left, and the
	// reset, read against the server's time. Set by readQuota.
	counted bool
	left    int64
	reset   time.Duration
}

// readQuota reads the calls left, once for classify and the learner.
func (hk *headerKinds) readQuota(h http.Header, srv time.Time) {
	if hk.quota {
		hk.left, hk.reset, hk.counted = quotaLeftOf(h, hk.fields, srv)
	}
}

func kindsOf(h http.Header) headerKinds {
	q := quotaForms(h)
	return headerKinds{quota: q.any(), policy: h[hdrRateLimitPolicy], fields: q}
}

// needServerTime reports whether classify may read absolute times from a
// response of status with these headers.
func (hk *headerKinds) needServerTime(status int) bool {
	return hk.quota || status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable || status == http.StatusForbidden
}

// askClassify calls Classify with a copy of resp whose body holds the
// start of the response body, so that the hook can read it while the
// caller still gets the whole body.
func (t *Transport) askClassify(resp *http.Response) (bool, time.Duration) {
	b := peekBody(resp)
	cp := *resp
	cp.Header = resp.Header.Clone()
	cp.Body = noClose{bytes.NewReader(b)}
	return t.Classify(&cp)
}

// retryBackoff returns the wait before retrying the attempt-th throttled
// attempt of a request (from 0) whose response named no wait:
// backoffBase, doubled for each throttled attempt, at most backoffMax and
// limit, less a random part of up to half ("equal jitter", so that
// clients throttled together spread out while each still waits at least
// half).
func retryBackoff(attempt int, limit time.Duration) time.Duration {
	d := backoffMax
	if attempt < 8 {
		d = min(backoffBase<<attempt, backoffMax)
	}
	d = max(0, min(d, limit))
	return d - rand.N(d/2+1)
}
