// Package redisstore is a sliding-window rate limiter whose state lives in
// Redis, so that many processes and machines share one exact quota.
//
// Every Limiter built with the same key and prefix on the same Redis (or
// Redis Cluster) gives the guarantee of package limiter for all of them
// together: never more than n calls in any interval of length w, a full burst
// of n at once, and each further call as soon as the oldest leaves the
// window. Several rules (WithWindow, e.g. 100 per minute and 1500 per hour)
// hold at once. Time is the Redis server's own clock (TIME), so the clocks of
// the clients never matter.
//
// Each decision is one round trip: a Lua script, run by EVALSHA, that
// counts and admits or refuses atomically, and when it refuses says how long
// until the next slot frees, which Wait sleeps on a timer. Most calls take
// its fast path: a log below the smallest limit admits with one write, and
// an Allow whose quota is spent is refused with one read. For a limiter with
// key "api" and the default prefix the data is:
//
//	limiter:{api}:log    sorted set, one member per call that holds a slot: a finished
//	                     call scored by its admission (or Done) time in µs, a permit
//	                     still in flight by minus the end of its lease
//	limiter:{api}:pause  string whose expiry ends a pause (PauseUntil)
//	limiter:{api}:fresh  string that lives an eighth of the longest window from
//	                     the last time the log was pruned and its expiry set
//
// The keys share the hash tag {api}, so Redis Cluster keeps them in one slot
// and the script may touch all of them. Each expires by itself once idle:
// the log after the longest window or the lease, whichever is longer, plus
// an eighth of the longest window; the pause when it ends. The log is pruned
// at least once per eighth of the longest window while calls come, so it
// holds at most the calls of a window and an eighth. Member ids start with
// a random per-process prefix, so processes never collide.
//
// A permit from Acquire holds a slot until Done, which re-times its entry to
// the server's time of Done, or Cancel, which removes it. A process that dies
// holding permits loses them when their lease ends (WithLease, default 30s).
//
// Each Limiter remembers its own calls that still count. When a script
// finds that Redis lost them (FLUSHDB, a restart without persistence,
// eviction), the Limiter puts them back and holds every process for one
// window of the shortest rule, so a quota that loses its state mid-window
// stays within its limit while its processes keep calling (README: "Lost
// state heals"). New reads Redis's maxmemory-policy; see EvictionRisk.
//
// While Redis cannot be reached (a network error, no reply within
// WithTimeout, a server that is loading, failing over or refusing writes),
// the failure policy decides: FailClosed (the default) returns the error and
// admits nothing; FailOpen admits and reports no error; WithFallback admits
// through a local *limiter.Limiter instead, counting against it the calls
// this process admitted through Redis in its window. Each call tries Redis
// first, so the limiter returns to Redis as soon as it answers. A Done,
// Cancel or pause that Redis does not take is kept and written with the
// next call that reaches it, never dropped; a pause also holds this process
// back by itself. A reply that is lost in the network can only cost a slot,
// never admit a call twice. Nothing in this package panics on a Redis
// failure.
package redisstore
