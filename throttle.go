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
// the response arrived; attempt counts the throttled attempts of this
// request before it, for the backoff.
//
// Throttled, by default: 429; 503 with a Retry-After; 403 with a
// Retry-After or a spent-quota header (GitHub's secondary and primary
// limits). Classify, when set, is asked first.
func (t *Transport) classify(resp *http.Response, now time.Time, attempt int) verdict {
	h := resp.Header
	var v verdict
	if t.Classify != nil && resp.StatusCode >= 400 {
		if ok, d := t.askClassify(resp); ok {
			v = verdict{throttled: true, wait: d, named: d > 0}
		}
	}
	interesting := v.throttled || mayHaveQuota(h) || isThrottleStatus(resp.StatusCode)
	if !interesting {
		return v // most responses: no clock or header work
	}
	srv := serverNow(h, now)
	reset, spent := quotaReset(h, srv, maxDuration)
	if !v.throttled {
		v = defaultVerdict(resp.StatusCode, h, srv, reset, spent)
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
func defaultVerdict(status int, h http.Header, srv time.Time, reset time.Duration, spent bool) verdict {
	_, hasRetryAfter := retryAfter(h, srv, maxDuration)
	switch status {
	case http.StatusTooManyRequests:
		return verdict{throttled: true}
	case http.StatusServiceUnavailable:
		// A 503 is throttling only when the server says when to come back.
		return verdict{throttled: hasRetryAfter}
	case http.StatusForbidden:
		return verdict{throttled: hasRetryAfter || spent}
	}
	return verdict{}
}

func isThrottleStatus(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable || status == http.StatusForbidden
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
