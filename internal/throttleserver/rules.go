package throttleserver

import "time"

// A rule is one quota that the server enforces for one key (or one route
// of a key). All methods are called with Server.mu held, with times that
// never go backwards for one rule (they are read under the same lock).
type rule interface {
	// wait returns how long from now until the rule admits a call of
	// weight n, if nothing else arrives meanwhile: 0 when it admits it now.
	wait(now time.Time, n int) time.Duration
	// add records a call of weight n at now.
	add(now time.Time, n int)
	// remaining returns how many calls of weight 1 the rule admits now.
	remaining(now time.Time) int
	// capacity is the heaviest call the rule can ever admit.
	capacity() int
}

// slidingRule admits at most limit weighted calls in any half-open interval
// of length window: a call at t counts in the windows that contain t and
// stops counting at exactly t + window.
type slidingRule struct {
	limit  int
	window time.Duration
	// log holds the calls that may still count, oldest first; total is the
	// sum of their weights. An entry leaves once now - at >= window.
	log   []weighted
	total int
}

type weighted struct {
	at time.Time
	n  int
}

func (r *slidingRule) prune(now time.Time) {
	i := 0
	for i < len(r.log) && now.Sub(r.log[i].at) >= r.window {
		r.total -= r.log[i].n
		i++
	}
	r.log = r.log[i:]
}

func (r *slidingRule) wait(now time.Time, n int) time.Duration {
	r.prune(now)
	if n > r.limit {
		return r.window // can never pass; tell the client to come back much later
	}
	// The call fits once enough of the oldest weight has left the window.
	excess := r.total + n - r.limit
	for _, e := range r.log {
		if excess <= 0 {
			break
		}
		excess -= e.n
		if excess <= 0 {
			return e.at.Add(r.window).Sub(now)
		}
	}
	return 0
}

func (r *slidingRule) add(now time.Time, n int) {
	r.prune(now)
	r.log = append(r.log, weighted{now, n})
	r.total += n
}

func (r *slidingRule) capacity() int { return r.limit }

func (r *slidingRule) remaining(now time.Time) int {
	r.prune(now)
	return max(r.limit-r.total, 0)
}

// bucketRule is the leaky bucket of nginx limit_req with rate = limit per
// window and burst = burst, kept as a theoretical arrival time (GCRA): each
// admitted call pushes tat one interval (window/limit) further, and a call
// is admitted when afterwards tat is at most burst+1 intervals ahead of now.
// So an idle bucket admits burst+1 calls at once, then one per interval;
// this is nginx's "excess" (tat - now - interval, in intervals) without its
// millisecond rounding.
type bucketRule struct {
	interval time.Duration
	burst    int
	tat      time.Time
}

func (r *bucketRule) tolerance() time.Duration {
	return time.Duration(r.burst+1) * r.interval
}

func (r *bucketRule) next(now time.Time, n int) time.Time {
	base := r.tat
	if base.Before(now) {
		base = now
	}
	return base.Add(time.Duration(n) * r.interval)
}

func (r *bucketRule) wait(now time.Time, n int) time.Duration {
	return max(r.next(now, n).Sub(now)-r.tolerance(), 0)
}

func (r *bucketRule) add(now time.Time, n int) { r.tat = r.next(now, n) }

func (r *bucketRule) capacity() int { return r.burst + 1 }

func (r *bucketRule) remaining(now time.Time) int {
	ahead := max(r.tat.Sub(now), 0)
	return int((r.tolerance() - ahead) / r.interval)
}

// fixedRule is a GitHub-style quota: a window opens at the first call after
// the previous one closed and lasts window, rounded up to a whole second so
// that X-RateLimit-Reset (Unix seconds) is exact; at most limit calls are
// admitted in it.
type fixedRule struct {
	limit  int
	window time.Duration
	reset  time.Time // the end of the current window; zero before the first call
	used   int
}

func (r *fixedRule) roll(now time.Time) {
	if now.Before(r.reset) {
		return
	}
	end := now.Add(r.window)
	if t := end.Truncate(time.Second); t.Before(end) {
		end = t.Add(time.Second)
	}
	r.reset, r.used = end, 0
}

func (r *fixedRule) wait(now time.Time, n int) time.Duration {
	r.roll(now)
	if r.used+n <= r.limit {
		return 0
	}
	return r.reset.Sub(now)
}

func (r *fixedRule) add(now time.Time, n int) {
	r.roll(now)
	r.used += n
}

func (r *fixedRule) capacity() int { return r.limit }

func (r *fixedRule) remaining(now time.Time) int {
	r.roll(now)
	return max(r.limit-r.used, 0)
}
