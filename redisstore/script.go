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

// Reply status of admitScript.
const (
	statusRefused  = 0
	statusAdmitted = 1
	statusLost     = 2 // the log lost calls that still count: restore, then ask again
)

// admitSource decides admission for every rule of one limiter at once.
//
// Redis data layout, both keys sharing the hash tag {key} so that Redis
// Cluster keeps them in one slot:
//
//	KEYS[1] <prefix>{<key>}:log    ZSET, one member per call that holds a slot
//	KEYS[2] <prefix>{<key>}:pause  string with a PX expiry; admit nothing while it
//	                               exists ("1": PauseUntil, "h": the hold after a loss)
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
// longer of the longest window and the lease), then the caller's evidence
// that the log must hold something: the id and score of one of its own
// entries that still counts ("" when it has none) and a horizon, a server
// time before which the log cannot be empty (0 when unknown); then limit and
// window µs of every rule.
//
// Every path writes first with ZREMRANGEBYSCORE, which frees memory: a
// Redis whose memory is full under noeviction refuses a script's first
// write only if it may grow memory, and never stops a script midway, so
// the decision, a Done and a pause still go through, and the log stays
// true to the calls made.
//
// Reply: {status, server now µs, wait µs, remaining, newest}. The status is
// statusLost, and nothing is decided, when the evidence shows that the log
// lost entries (FLUSHDB, a restart without persistence, eviction); the
// evidence is looked at only before an admission (and for opRemaining),
// since a log that lost entries and still refuses was full anyway. The wait
// is reported on refusal by opWait and opAcquire: how long until the next
// slot frees if nothing else changes, that is until the oldest call that
// keeps a full rule full leaves its window, or, when in-flight permits alone
// fill the rule, until the earliest lease ends but at most one window (a
// Done re-times the entry, a Cancel frees it at once); or until a pause
// ends. newest is the score of the newest finished call in the log (0 if
// none), from which the caller learns a horizon.
const admitSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op, id, key = ARGV[1], ARGV[2], KEYS[1]
if op == 'c' then
	return {redis.call('ZREM', key, id), now, 0, 0, 0}
end
local longest = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, -now, now - longest)
if op == 'd' then
	redis.call('ZADD', key, now, id)
	redis.call('PEXPIRE', key, ARGV[5])
	return {1, now, 0, 0, now}
end
local held = redis.call('ZCARD', key)
local report = op == 'w' or op == 'q'
local wait, remaining = 0, nil
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
	wait, remaining = paused * 1000, 0
end
for i = 9, #ARGV, 2 do
	local n, w = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
	local c = held
	if w < longest then
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
local function refuse()
	local newest = 0
	if held > 0 then -- every refusal: a caller that only polls keeps a fresh horizon
		local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
		newest = math.max(tonumber(e[2]), 0)
	end
	return {0, now, wait, remaining, newest}
end
if wait > 0 and op ~= 'r' then
	return refuse() -- a log that lost calls is fuller still: no need to look
end
-- About to admit, or to say what Allow would: first, does the log hold what
-- the caller knows it must?
if held == 0 and now < tonumber(ARGV[8]) then
	return {2, now, 0, 0, 0}
end
if ARGV[6] ~= '' then
	local s = tonumber(ARGV[7])
	if ((s > 0 and s > now - longest) or (s < 0 and -s > now)) and not redis.call('ZSCORE', key, ARGV[6]) then
		return {2, now, 0, 0, 0}
	end
end
if op == 'r' then
	return refuse()
end
local newest = now
if op == 'q' then
	redis.call('ZADD', key, -(now + tonumber(ARGV[3])), id)
	newest = 0
else
	redis.call('ZADD', key, now, id)
end
redis.call('PEXPIRE', key, ARGV[5])
return {1, now, 0, remaining - 1, newest}
`

// syncSource writes what this process knows and Redis does not: its own
// calls that still count (after a loss, or admitted through the fallback, or
// whose Done could not be written), the ids of its cancelled permits, and its
// pause; and, after a loss, the hold.
//
// ARGV: key TTL ms, longest window µs, hold ms (0: none), pause ms (0:
// none), the number k of ids to remove, those k ids, then score and id of
// each entry to write. The hold extends the pause key to the hold's end
// unless a hold ("h") already runs: the first process to find a loss holds
// every process back for one window, later finders of the same loss do not
// extend it. Reply: the server's now in µs.
const syncSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key, pause = KEYS[1], KEYS[2]
redis.call('ZREMRANGEBYSCORE', key, -now, now - tonumber(ARGV[2]))
local k = tonumber(ARGV[5])
for i = 6, 5 + k do
	redis.call('ZREM', key, ARGV[i])
end
for i = 6 + k, #ARGV, 2 do
	redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
end
if #ARGV >= 6 + k then
	redis.call('PEXPIRE', key, ARGV[1])
end
local hold, ms = tonumber(ARGV[3]), tonumber(ARGV[4])
if hold > 0 and redis.call('GET', pause) ~= 'h' and redis.call('PTTL', pause) < hold then
	redis.call('SET', pause, 'h', 'PX', hold)
end
if ms > 0 and redis.call('PTTL', pause) < ms then
	redis.call('SET', pause, '1', 'PX', ms)
end
return now
`

var (
	admitScript = redis.NewScript(admitSource)
	syncScript  = redis.NewScript(syncSource)
)

// result is the decoded reply of admitScript.
type result struct {
	status    int
	at        int64         // server time of the decision, µs since the Unix epoch
	wait      time.Duration // when refused: until the next slot frees
	remaining int
	newest    int64 // score of the newest finished call in the log, 0 if none
}

func (r result) ok() bool { return r.status == statusAdmitted }

// parseResult decodes the reply of admitScript.
func parseResult(v any) (result, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 5 {
		return result{}, fmt.Errorf("redisstore: unexpected script reply %v", v)
	}
	var n [5]int64
	for i := range n {
		if n[i], ok = a[i].(int64); !ok {
			return result{}, fmt.Errorf("redisstore: unexpected script reply %v", v)
		}
	}
	return result{
		status:    int(n[0]),
		at:        n[1],
		wait:      time.Duration(n[2]) * time.Microsecond,
		remaining: int(n[3]),
		newest:    n[4],
	}, nil
}
