package redisstore

import (
	"fmt"
	"time"

	"github.com/apiquota/limiter"
)

// DefaultLease is how long an in-flight permit holds its slot when it is
// never marked Done or Cancelled, unless WithLease says otherwise.
const DefaultLease = 30 * time.Second

// DefaultTimeout is the longest one decision waits for Redis before the
// failure policy applies, unless WithTimeout says otherwise.
const DefaultTimeout = 300 * time.Millisecond

// DefaultPrefix is prepended to every Redis key unless WithPrefix says
// otherwise.
const DefaultPrefix = "limiter:"

// FailurePolicy says what a Limiter does while Redis cannot be reached.
type FailurePolicy int

const (
	// FailClosed returns the error and admits nothing. It is the default.
	FailClosed FailurePolicy = iota
	// FailOpen admits every call and reports no error.
	FailOpen
)

// String returns the name of the policy.
func (p FailurePolicy) String() string {
	switch p {
	case FailClosed:
		return "FailClosed"
	case FailOpen:
		return "FailOpen"
	}
	return fmt.Sprintf("FailurePolicy(%d)", int(p))
}

// An Option configures a Limiter built by New.
type Option func(*config)

type rule struct {
	limit  int
	window time.Duration
}

type config struct {
	rules    []rule
	prefix   string
	lease    time.Duration
	policy   FailurePolicy
	fallback *limiter.Limiter
	timeout  time.Duration
}

// WithWindow adds a rule: at most limit calls in any interval of length
// window, checked in the same script as the rule given to New, so every rule
// holds at once (for example 100 per minute and 1500 per hour). Each rule must
// be stricter somewhere than every rule before it.
func WithWindow(limit int, window time.Duration) Option {
	return func(c *config) { c.rules = append(c.rules, rule{limit, window}) }
}

// WithPrefix sets the text prepended to every Redis key of the limiter
// (default DefaultPrefix). Limiters share a quota when their prefix and key
// are equal. Like the key, the prefix must not contain '{' or '}': the keys
// of a limiter are "<prefix>{<key>}:...", and their hash tag {<key>} keeps
// them in one Redis Cluster slot.
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithLease sets how long a permit from Acquire holds its slot when it is
// never marked Done or Cancelled, for example because its process crashed
// (default DefaultLease). Once the lease ends, the slot is free again. Choose
// a lease longer than any call takes: a call that outlives its lease stops
// counting until it is Done.
func WithLease(d time.Duration) Option {
	return func(c *config) { c.lease = d }
}

// WithFailurePolicy sets what the limiter does while Redis cannot be reached
// (default FailClosed). WithFallback takes precedence over it.
func WithFailurePolicy(p FailurePolicy) Option {
	return func(c *config) { c.policy = p }
}

// WithFallback makes the limiter admit through l while Redis cannot be
// reached: Allow, Wait and Acquire then delegate to l, and the next call
// tries Redis again. Give l a share of the quota small enough that all
// processes together stay within it. WithFallback takes precedence over
// WithFailurePolicy; a nil l means no fallback.
func WithFallback(l *limiter.Limiter) Option {
	return func(c *config) { c.fallback = l }
}

// WithTimeout sets the longest one round trip to Redis may take before
// Redis counts as unreachable and the failure policy or the fallback
// answers (default DefaultTimeout). It holds whatever the client's own
// timeouts. go-redis on its default options reads for 5s and ignores a
// context's deadline: a *redis.Client is then used through its
// WithTimeout(d) clone, which shares its connection pool and honours
// deadlines; a ClusterClient's round trip is left to finish on a goroutine
// of its own, and such goroutines are bounded by the client's pool (its
// connections stay stuck in reads until the client's read timeout, the rest
// end at d, waiting for a connection). A caller's context that ends first
// ends the call with the context's error, not the failure policy. Round
// trips under a context that can never end (context.Background()) share a
// deadline with those that start within d/16 of them, so each is given at
// least 15/16 of d. A decision that finds lost state makes more round trips
// (see Limiter), each within d.
func WithTimeout(d time.Duration) Option {
	return func(c *config) { c.timeout = d }
}

// check validates the rules and settings, in the words of the caller.
func (c *config) check() error {
	for i, r := range c.rules {
		if r.limit <= 0 {
			return fmt.Errorf("redisstore: limit must be positive, got %d", r.limit)
		}
		if r.window <= 0 {
			return fmt.Errorf("redisstore: window must be positive, got %v", r.window)
		}
		for _, p := range c.rules[:i] {
			if redundant(p, r) {
				return fmt.Errorf("redisstore: rule %d per %v is no tighter than rule %d per %v", r.limit, r.window, p.limit, p.window)
			}
		}
	}
	if c.lease <= 0 {
		return fmt.Errorf("redisstore: lease must be positive, got %v", c.lease)
	}
	if c.timeout <= 0 {
		return fmt.Errorf("redisstore: timeout must be positive, got %v", c.timeout)
	}
	if c.policy != FailClosed && c.policy != FailOpen {
		return fmt.Errorf("redisstore: unknown failure policy %v", c.policy)
	}
	return nil
}

// redundant reports whether rule r never refuses a call that p admits:
// p allows at most p.limit*ceil(r.window/p.window) calls in r's window.
func redundant(p, r rule) bool {
	k := r.window / p.window
	if r.window%p.window != 0 {
		k++
	}
	return int64(k) <= int64(r.limit/p.limit)
}
