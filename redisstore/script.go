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
// Redis data layout, the keys sharing the hash tag {key} so that Redis
// Cluster keeps them in one slot:
//
//	KEYS[1] <prefix>{<key>}:log    ZSET, one member per call that holds a slot
//	KEYS[2] <prefix>{<key>}:pause  string with a PX expiry; admit nothing while it
//	                               exists ("1": PauseUntil, "h": the hold after a loss)
//	KEYS[3] <prefix>{<key>}:fresh  string with a PX expiry: the log's TTL was set
//	                               less than the slack ago (see below)
//
// A finished call is scored by its admission (or Done) time s, a positive
// count of microseconds of the server's TIME: it counts in a rule of window w
// while s > now-w, and stops counting at exactly s+w. An in-flight permit is
// scored by minus the end of its lease, -e: it counts in every rule while
// e > now. So one ZREMRANGEBYSCORE over [-now, now-longest window] drops both
// the calls that left every window and the leases that ended, after which
// ZCARD is the count of the longest rule. Times stay below 2^53, so Lua's
// doubles hold them exactly; they are handed to redis.call as numbers (or as
// the digits of TIME), never through Lua's tostring, which would round them.
//
// ARGV: op, member id, lease µs, then the caller's evidence that the log
// must hold something: the id of one of its own entries that still counts
// ("" when it has none) and a horizon, a server time before which the log
// cannot be empty (0 when unknown, or with evidence); then minus the limit
// and the window µs of every rule, the rule of the smallest limit m first
// (its -m is a rank for ZRANGE as it is). Where needed, the script works out
// the longest window and the log's TTL in ms: what it must have left after
// an admission, the longer of the longest window and the lease, plus a
// slack of an eighth of the longest window.
//
// The fast path decides most calls with a few reads and one write. A log of
// fewer than m members, stale ones included, is below every limit: the call
// is admitted unless a pause runs or the evidence shows a loss, with one
// ZADD. The log is pruned, and its TTL set, only when its TTL may have
// fallen below what it must have left: once per slack, an eighth of the
// longest window, so it holds at most the calls of a window and an eighth.
// The fresh key, set with the TTL and expiring a millisecond before the
// slack ends, says when; one EXISTS reads it with the pause. It vouches for
// the log's TTL only to a caller whose evidence the log holds: such a log
// was not created by this call, and every log gets its TTL when created, so
// it lives at least until the TTL set with the fresh key ends, whatever
// came between. Without evidence, the call reads the log's PTTL instead.
// An Allow whose m-th newest member is a finished call within its rule's
// window is refused at once, without a prune. Every other call takes the
// full path: prune, count each rule, and decide.
//
// A Redis whose memory is full under noeviction refuses a script's first
// write only if it may grow memory, and never stops a script midway. The
// full path and a Done write first with ZREMRANGEBYSCORE, which frees
// memory; the fast path's ZADD, refused for memory, is made again after
// one. So the decision, a Done and a pause still go through, and the log
// stays true to the calls made.
//
// Reply: a number, the server's now in µs, when the call is admitted (or a
// Done is written); {now, newest} when the fast path refuses an Allow; else
// {status, server now µs, wait µs, remaining, newest}. The status is
// statusLost, and nothing is decided, when the log does not hold the
// evidence or is empty before the horizon: it lost entries (FLUSHDB, a
// restart without persistence, eviction), unless the evidence left every
// window on its way to Redis, which the caller checks. The evidence is
// looked at only before an admission (and for opRemaining), since a log
// that lost entries and still refuses was full anyway. The wait
// is reported on refusal by opWait and opAcquire: how long until the next
// slot frees if nothing else changes, that is until the oldest call that
// keeps a full rule full leaves its window, or, when in-flight permits alone
// fill the rule, until the earliest lease ends but at most one window (a
// Done re-times the entry, a Cancel frees it at once); or until a pause
// ends. newest is the score of a finished call in the log (0 if none): the
// newest on the full path, the m-th newest on the fast one; the caller
// learns a horizon from it.
const admitSource = `
local call = redis.call
local t = call('TIME')
local now = t[1] * 1000000 + t[2]
local op, id, key = ARGV[1], ARGV[2], KEYS[1]
if op == 'c' then
	return {call('ZREM', key, id), now, 0, 0, 0}
end
if op ~= 'd' and op ~= 'r' then
	local e = call('ZRANGE', key, ARGV[6], ARGV[6], 'WITHSCORES')
	if e[1] == nil then
		-- 2 or 3: paused; 1 or 3: the log's TTL was set within the slack
		local flags = call('EXISTS', KEYS[2], KEYS[2], KEYS[3])
		if flags < 2 then
			local known = ARGV[4] ~= '' -- then the log holds the evidence: it is not empty
			if known and not call('ZSCORE', key, ARGV[4]) then
				return {2, now, 0, 0, 0}
			end
			if known or now >= ARGV[5] + 0 then
				local score
				if op == 'q' then
					score = -(now + ARGV[3])
				else
					local us = t[2] -- the digits of now, without a number to format
					if #us < 6 then
						us = string.rep('0', 6 - #us) .. us
					end
					score = t[1] .. us
				end
				local refused = type(redis.pcall('ZADD', key, score, id)) == 'table'
				local longest, slack, ttl
				if refused or flags == 0 or not known then
					longest = ARGV[7] + 0 -- the longest window µs
					for i = 9, #ARGV, 2 do
						longest = math.max(longest, ARGV[i] + 0)
					end
					slack = math.ceil(longest / 8000) -- ms
					ttl = math.ceil(math.max(longest, ARGV[3]) / 1000) + slack
					if refused then -- for memory: free some first
						call('ZREMRANGEBYSCORE', key, -now, now - longest)
						call('ZADD', key, score, id)
					end
				end
				if flags == 0 or (not known and call('PTTL', key) < ttl - slack) then
					call('ZREMRANGEBYSCORE', key, -now, now - longest)
					call('PEXPIRE', key, ttl)
					if slack > 1 then
						call('SET', KEYS[3], '1', 'PX', slack - 1)
					end
				end
				return now
			end
		end
	elseif op == 'a' and e[2] + ARGV[7] > now then
		return {now, e[2] + 0}
	end
end
-- the longest window µs, and the log's TTL in ms to set
local longest = ARGV[7] + 0
for i = 9, #ARGV, 2 do
	longest = math.max(longest, ARGV[i] + 0)
end
local ttl = math.ceil(math.max(longest, ARGV[3]) / 1000) + math.ceil(longest / 8000)
call('ZREMRANGEBYSCORE', key, -now, now - longest)
if op == 'd' then
	call('ZADD', key, now, id)
	call('PEXPIRE', key, ttl)
	return now
end
local held = call('ZCARD', key)
local report = op == 'w' or op == 'q'
local wait, remaining = 0, nil
local paused = call('PTTL', KEYS[2])
if paused > 0 then
	wait, remaining = paused * 1000, 0
end
for i = 6, #ARGV, 2 do
	local n, w = -ARGV[i], ARGV[i + 1] + 0
	local c = held
	if w < longest then
		c = held - call('ZCOUNT', key, 1, now - w)
	end
	local r = n - c
	if remaining == nil or r < remaining then
		remaining = r
	end
	if r <= 0 then
		local d = 1
		if report then
			-- skip the c-n oldest: the next one frees the slot (c-n, not -r, is never -0)
			local e = call('ZRANGEBYSCORE', key, now - w + 1, '+inf', 'WITHSCORES', 'LIMIT', c - n, 1)
			if #e > 0 then
				d = e[2] + w - now
			else
				e = call('ZREVRANGEBYSCORE', key, -1, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
				d = math.min(-e[2] - now, w)
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
-- A log that lost calls is fuller still: a refusal needs no evidence.
if wait == 0 or op == 'r' then
	-- About to admit, or to say what Allow would: first, does the log hold
	-- what the caller knows it must?
	if (held == 0 and now < ARGV[5] + 0) or (ARGV[4] ~= '' and not call('ZSCORE', key, ARGV[4])) then
		return {2, now, 0, 0, 0}
	end
	if op ~= 'r' then
		if op == 'q' then
			call('ZADD', key, -(now + ARGV[3]), id)
		else
			call('ZADD', key, now, id)
		end
		call('PEXPIRE', key, ttl)
		return now
	end
end
local newest = 0
if held > 0 then -- every refusal: a caller that only polls keeps a fresh horizon
	newest = math.max(call('ZRANGE', key, -1, -1, 'WITHSCORES')[2] + 0, 0)
end
return {0, now, wait, remaining, newest}
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

// parseResult decodes the reply of admitScript to op.
func parseResult(v any, op string) (result, error) {
	switch a := v.(type) {
	case int64: // admitted at a
		res := result{status: statusAdmitted, at: a, newest: a}
		if op == opAcquire {
			res.newest = 0 // in flight: no finished call
		}
		return res, nil
	case []any:
		var n [5]int64
		if len(a) != 2 && len(a) != 5 {
			break
		}
		for i := range a {
			var ok bool
			if n[i], ok = a[i].(int64); !ok {
				return result{}, fmt.Errorf("redisstore: unexpected script reply %v", v)
			}
		}
		if len(a) == 2 { // an Allow refused on the fast path: {now, newest}
			return result{status: statusRefused, at: n[0], newest: n[1]}, nil
		}
		return result{
			status:    int(n[0]),
			at:        n[1],
			wait:      time.Duration(n[2]) * time.Microsecond,
			remaining: int(n[3]),
			newest:    n[4],
		}, nil
	}
	return result{}, fmt.Errorf("redisstore: unexpected script reply %v", v)
}
