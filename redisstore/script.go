package redisstore

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Operations of admitScript, passed as ARGV[1].
const (
	opAllow     = "a" // admit at the server's now, or refuse
	opWait      = "w" // as opAllow, and on refusal report the wait
	opAcquire   = "q" // admit as in flight until now+lease, or report the wait
	opDone      = "d" // re-time an in-flight entry to the server's now
	opCancel    = "c" // drop an in-flight entry
	opRemaining = "r" // report what Allow would admit
)

// admitSource decides admission for every rule of one limiter at once.
//
// Redis data layout, both keys sharing the hash tag {key} so that Redis
// Cluster keeps them in one slot:
//
//	KEYS[1] <prefix>{<key>}:log    ZSET, one member per call that holds a slot
//	KEYS[2] <prefix>{<key>}:pause  string with a PX expiry; admit nothing while it exists
//
// A finished call is scored by its admission (or Done) time s, a positive
// count of microseconds of the server's TIME: it counts in a rule of window w
// while s > now-w, and stops counting at exactly s+w. An in-flight permit is
// scored by minus the end of its lease, -e: it counts in every rule while
// e > now. So one ZREMRANGEBYSCORE over [-now, now-longest window] drops both
// the calls that left every window and the leases that ended, after which
// ZCARD is the count of the longest rule. Times stay below 2^53, so Lua's
// doubles hold them exactly; they are handed to redis.call as numbers, never
// through Lua's tostring, which would round them.
//
// ARGV: op, member id, lease µs, longest window µs, key TTL in ms (the
// longer of the longest window and the lease), then limit and window µs of
// every rule.
//
// Reply: {admitted (0/1), server now µs, wait µs, remaining}. The wait is
// reported on refusal by opWait and opAcquire: how long until the next slot
// frees if nothing else changes, that is until the oldest call that keeps a
// full rule full leaves its window, or, when in-flight permits alone fill the
// rule, until the earliest lease ends but at most one window (a Done re-times
// the entry, a Cancel frees it at once); or until a pause ends.
const admitSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op, id, key = ARGV[1], ARGV[2], KEYS[1]
if op == 'c' then
	return {redis.call('ZREM', key, id), now, 0, 0}
end
if op == 'd' then
	redis.call('ZADD', key, now, id)
	redis.call('PEXPIRE', key, ARGV[5])
	return {1, now, 0, 0}
end
redis.call('ZREMRANGEBYSCORE', key, -now, now - tonumber(ARGV[4]))
local held = redis.call('ZCARD', key)
local report = op == 'w' or op == 'q'
local wait, remaining = 0, nil
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
	wait, remaining = paused * 1000, 0
end
for i = 6, #ARGV, 2 do
	local n, w = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
	local c = held
	if w < tonumber(ARGV[4]) then
		c = held - redis.call('ZCOUNT', key, 1, now - w)
	end
	local r = n - c
	if remaining == nil or r < remaining then
		remaining = r
	end
	if r <= 0 then
		local d = 1
		if report then
			-- skip the c-n oldest: the next one frees the slot (c-n, not -r, is never -0)
			local e = redis.call('ZRANGEBYSCORE', key, now - w + 1, '+inf', 'WITHSCORES', 'LIMIT', c - n, 1)
			if #e > 0 then
				d = tonumber(e[2]) + w - now
			else
				e = redis.call('ZREVRANGEBYSCORE', key, -1, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
				d = math.min(-tonumber(e[2]) - now, w)
			end
		end
		if d > wait then
			wait = d
		end
	end
end
if remaining < 0 then
	remaining = 0
end
if wait > 0 or op == 'r' then
	return {0, now, wait, remaining}
end
if op == 'q' then
	redis.call('ZADD', key, -(now + tonumber(ARGV[3])), id)
else
	redis.call('ZADD', key, now, id)
end
redis.call('PEXPIRE', key, ARGV[5])
return {1, now, 0, remaining - 1}
`

// pauseSource sets the pause key to expire in ARGV[1] ms unless it already
// lasts longer: a pause only ever extends.
const pauseSource = `
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
	redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 0
`

var (
	admitScript = redis.NewScript(admitSource)
	pauseScript = redis.NewScript(pauseSource)
)

// result is the decoded reply of admitScript.
type result struct {
	ok        bool
	at        int64         // server time of the decision, µs since the Unix epoch
	wait      time.Duration // when refused: until the next slot frees
	remaining int
}

// parseResult decodes the reply of admitScript.
func parseResult(v any) (result, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 4 {
		return result{}, fmt.Errorf("redisstore: unexpected script reply %v", v)
	}
	var n [4]int64
	for i := range n {
		if n[i], ok = a[i].(int64); !ok {
			return result{}, fmt.Errorf("redisstore: unexpected script reply %v", v)
		}
	}
	return result{
		ok:        n[0] == 1,
		at:        n[1],
		wait:      time.Duration(n[2]) * time.Microsecond,
		remaining: int(n[3]),
	}, nil
}
