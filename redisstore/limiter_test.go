package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apiquota/limiter"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The core's Transport pauses an Acquirer that is a limiter.Pauser after a 429.
var _ limiter.Pauser = (*Limiter)(nil)

// newTestLimiter builds a limiter whose round trips may take 10s by
// default, so that CPU load never makes a healthy Redis unreachable; tests
// of the timeout give their own.
func newTestLimiter(t *testing.T, c redis.UniversalClient, key string, n int, w time.Duration, opts ...Option) *Limiter {
	t.Helper()
	l, err := New(c, key, n, w, append([]Option{WithTimeout(10 * time.Second)}, opts...)...)
	require.NoError(t, err)
	return l
}

// allow runs the script once as Wait does, and returns its whole answer,
// the wait included.
func allow(t *testing.T, l *Limiter) result {
	t.Helper()
	res, err := l.decide(context.Background(), opWait, nextSeq())
	require.NoError(t, err)
	return res
}

// admitWaiting runs op for seq as Wait does, and returns the reply that
// admits it, so that a test sees the server's time of admission.
func admitWaiting(ctx context.Context, l *Limiter, op string, seq uint64) (result, error) {
	for {
		res, err := l.decide(ctx, op, seq)
		if err != nil || res.ok() {
			return res, err
		}
		select {
		case <-ctx.Done():
			return result{}, ctx.Err()
		case <-time.After(res.wait):
		}
	}
}

func us(d time.Duration) int64 { return int64(d / time.Microsecond) }

func TestNewErrors(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1}) // New's one call (CONFIG GET) fails at once
	t.Cleanup(func() { _ = c.Close() })
	var nilClient *redis.Client
	tests := []struct {
		name   string
		client redis.UniversalClient
		key    string
		limit  int
		window time.Duration
		opts   []Option
		want   string
	}{
		{"nil client", nil, "k", 1, time.Second, nil, "redisstore: client must not be nil"},
		{"typed nil client", nilClient, "k", 1, time.Second, nil, "redisstore: client must not be nil"},
		{"empty key", c, "", 1, time.Second, nil, "redisstore: key must not be empty"},
		{"hash tag in key", c, "a{b}", 1, time.Second, nil, `got "a{b}"`},
		{"hash tag in prefix", c, "k", 1, time.Second, []Option{WithPrefix("p{")}, `got "p{"`},
		{"zero limit", c, "k", 0, time.Second, nil, "redisstore: limit must be positive, got 0"},
		{"negative limit", c, "k", -3, time.Second, nil, "redisstore: limit must be positive, got -3"},
		{"zero window", c, "k", 1, 0, nil, "redisstore: window must be positive, got 0s"},
		{"negative window", c, "k", 1, -time.Second, nil, "redisstore: window must be positive, got -1s"},
		{"zero lease", c, "k", 1, time.Second, []Option{WithLease(0)}, "redisstore: lease must be positive, got 0s"},
		{"negative lease", c, "k", 1, time.Second, []Option{WithLease(-time.Millisecond)}, "redisstore: lease must be positive, got -1ms"},
		{"bad rule limit", c, "k", 1, time.Second, []Option{WithWindow(0, time.Hour)}, "redisstore: limit must be positive, got 0"},
		{"bad rule window", c, "k", 1, time.Second, []Option{WithWindow(5, -time.Hour)}, "redisstore: window must be positive, got -1h0m0s"},
		{"equal rule", c, "k", 5, time.Second, []Option{WithWindow(5, time.Second)}, "redisstore: rule 5 per 1s is no tighter than rule 5 per 1s"},
		{"looser rule", c, "k", 5, time.Second, []Option{WithWindow(300, time.Minute)}, "redisstore: rule 300 per 1m0s is no tighter than rule 5 per 1s"},
		{"looser by ceil", c, "k", 5, time.Second, []Option{WithWindow(10, 1500*time.Millisecond)}, "no tighter than rule 5 per 1s"},
		{"nil option", c, "k", 1, time.Second, []Option{nil}, "redisstore: nil Option"},
		{"unknown policy", c, "k", 1, time.Second, []Option{WithFailurePolicy(7)}, "redisstore: unknown failure policy FailurePolicy(7)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(tt.client, tt.key, tt.limit, tt.window, tt.opts...)
			assert.Nil(t, l)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.True(t, strings.HasPrefix(err.Error(), "redisstore: "), err.Error())
		})
	}

	// Tighter rules are fine: 9 per 1.5s binds where 5 per 1s allows 10.
	_, err := New(c, "k", 5, time.Second, WithWindow(9, 1500*time.Millisecond), WithWindow(100, time.Minute))
	assert.NoError(t, err)
}

func TestAllowBurstThenSlide(t *testing.T) {
	s := startRedis(t)
	const n, w = 5, 300 * time.Millisecond
	l := newTestLimiter(t, s.Client(t), "burst", n, w)

	var times []int64
	for i := range n {
		res := allow(t, l)
		require.True(t, res.ok(), "call %d of the burst", i)
		times = append(times, res.at)
		assert.Equal(t, n-1-i, remainingOf(t, l))
	}
	refused := allow(t, l)
	require.False(t, refused.ok(), "call n+1 within the window")
	// The slot frees at exactly times[0] + w on the server clock.
	assert.Equal(t, times[0]+us(w)-refused.at, us(refused.wait))
	ok, err := l.Allow(context.Background())
	require.NoError(t, err)
	assert.False(t, ok, "Allow refuses too")
	assert.Len(t, times, n)

	time.Sleep(refused.wait) // Redis's own clock has to move
	again := allow(t, l)
	assert.True(t, again.ok(), "admitted once the first call left the window")
	assert.GreaterOrEqual(t, again.at, times[0]+us(w))

	// The second call of the burst frees the next slot, at exactly its time + w.
	next := allow(t, l)
	if next.ok() {
		assert.GreaterOrEqual(t, next.at, times[1]+us(w))
	} else {
		assert.Equal(t, times[1]+us(w)-next.at, us(next.wait))
	}
}

func TestMultipleRules(t *testing.T) {
	s := startRedis(t)
	c := s.Client(t)
	// 5 per 200ms and 8 per 1s, given in either order.
	orders := map[string]func(key string) *Limiter{
		"short first": func(key string) *Limiter {
			return newTestLimiter(t, c, key, 5, 200*time.Millisecond, WithWindow(8, time.Second))
		},
		"long first": func(key string) *Limiter {
			return newTestLimiter(t, c, key, 8, time.Second, WithWindow(5, 200*time.Millisecond))
		},
	}
	for name, build := range orders {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			l := build(name)
			var times []int64
			for range 5 {
				res := allow(t, l)
				require.True(t, res.ok())
				times = append(times, res.at)
			}
			refused := allow(t, l)
			require.False(t, refused.ok())
			assert.Equal(t, times[0]+us(200*time.Millisecond)-refused.at, us(refused.wait), "the short rule binds first")

			for range 3 {
				res, err := admitWaiting(ctx, l, opWait, nextSeq())
				require.NoError(t, err)
				times = append(times, res.at)
			}
			assert.GreaterOrEqual(t, times[5], times[0]+us(200*time.Millisecond))

			refused = allow(t, l)
			require.False(t, refused.ok())
			assert.Equal(t, times[0]+us(time.Second)-refused.at, us(refused.wait), "now the long rule binds: 8 in 1s")
			n, err := l.Remaining(ctx)
			require.NoError(t, err)
			assert.Equal(t, 0, n)
		})
	}
}

// TestExactManyClients runs greedy callers in three processes' worth of
// clients against one small rule and checks, from the server's times of
// admission (or of Done, for two-phase calls), that no window holds more than
// the limit, and that some window held the whole limit.
func TestExactManyClients(t *testing.T) {
	s := startRedis(t)
	const (
		n       = 20
		w       = 500 * time.Millisecond
		run     = 2400 * time.Millisecond // 5 windows, ending before the 6th burst
		clients = 3
		workers = 4
	)
	ctx, cancel := context.WithTimeout(context.Background(), run+300*time.Millisecond)
	defer cancel()

	var (
		mu    sync.Mutex
		times []int64
		wg    sync.WaitGroup
	)
	for range clients {
		l := newTestLimiter(t, s.Client(t), "exact", n, w)
		for i := range workers {
			twoPhase := i == 0 // Acquire, then Done at once: counts from Done
			wg.Go(func() {
				for {
					op, id := opWait, nextSeq()
					if twoPhase {
						op = opAcquire
					}
					res, err := admitWaiting(ctx, l, op, id)
					if err != nil {
						if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
							t.Errorf("wait: %v", err)
						}
						return
					}
					if twoPhase {
						// What Permit.Done does, keeping the server's time of Done.
						if res.at, err = l.done(id); err != nil {
							t.Errorf("done: %v", err)
							return
						}
					}
					mu.Lock()
					times = append(times, res.at)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()

	slices.Sort(times)
	require.NotEmpty(t, times)
	for i := n; i < len(times); i++ {
		// Calls i-n .. i are n+1 calls; they must span at least w.
		if times[i]-times[i-n] < us(w) {
			t.Fatalf("%d calls in [%d, %d), %dµs < window %v", n+1, times[i-n], times[i], times[i]-times[i-n], w)
		}
	}
	inRun := 0
	for _, at := range times {
		if at < times[0]+us(run) {
			inRun++
		}
	}
	permitted := n * int((run+w-1)/w)
	t.Logf("admitted %d of %d permitted in %v (%d in all)", inRun, permitted, run, len(times))
	assert.LessOrEqual(t, inRun, permitted)
	// Not a rate, which load on the machine would lower: a full burst.
	assert.Equal(t, n, maxInWindow(times, w), "some window held exactly the limit")
}

func TestAcquireDoneCancel(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	const w = 300 * time.Millisecond
	l := newTestLimiter(t, c, "twophase", 2, w)
	log := l.keys[0]
	inFlight := func() int64 { return c.ZCount(ctx, log, "-inf", "-1").Val() }

	p1, err := l.Acquire(ctx)
	require.NoError(t, err)
	p2, err := l.Acquire(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2, inFlight())

	refused := allow(t, l)
	assert.False(t, refused.ok(), "in-flight permits hold their slots")
	assert.Positive(t, refused.wait)
	assert.LessOrEqual(t, refused.wait, w, "recheck within a window, not after the lease")

	p1.Cancel()
	assert.EqualValues(t, 1, inFlight())
	first := allow(t, l)
	assert.True(t, first.ok(), "Cancel frees the slot")
	assert.False(t, allow(t, l).ok())

	id2 := idOf(p2.(*permit).seq)
	p2.Done()
	assert.EqualValues(t, 0, inFlight())
	doneAt, err := c.ZScore(ctx, log, id2).Result()
	require.NoError(t, err, "Done keeps the entry")
	assert.GreaterOrEqual(t, int64(doneAt), first.at, "at the time of Done")

	refused = allow(t, l)
	assert.False(t, refused.ok(), "a Done call counts for a full window")
	assert.Equal(t, first.at+us(w)-refused.at, us(refused.wait))

	// Second Done or Cancel does nothing.
	p2.Cancel()
	p2.Done()
	p1.Done()
	again, err := c.ZScore(ctx, log, id2).Result()
	require.NoError(t, err)
	assert.Equal(t, doneAt, again)
	assert.EqualValues(t, 2, c.ZCard(ctx, log).Val())
	assert.EqualValues(t, 0, inFlight())

	time.Sleep(refused.wait) // first leaves on Redis's clock
	last := allow(t, l)
	assert.True(t, last.ok(), "%+v first %d done %v entries %v", last, first.at, doneAt, c.ZRangeWithScores(ctx, log, 0, -1).Val())
}

func TestLeaseExpiry(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	const lease = 150 * time.Millisecond
	l := newTestLimiter(t, c, "lease", 1, time.Minute, WithLease(lease))

	p, err := l.Acquire(ctx) // never Done: its process "crashed"
	require.NoError(t, err)
	score, err := c.ZScore(ctx, l.keys[0], idOf(p.(*permit).seq)).Result()
	require.NoError(t, err)

	refused := allow(t, l)
	require.False(t, refused.ok())
	leaseEnd := -int64(score)
	assert.Positive(t, leaseEnd-refused.at)
	assert.LessOrEqual(t, leaseEnd-refused.at, us(lease))
	assert.Equal(t, leaseEnd-refused.at, us(refused.wait), "the slot frees when the lease ends")

	start := time.Now()
	require.NoError(t, l.Wait(ctx))
	assert.Less(t, time.Since(start), lease+time.Second, "not the window of a minute")
}

func TestRemainingAndPause(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	a := newTestLimiter(t, s.Client(t), "shared", 3, time.Minute)
	b := newTestLimiter(t, s.Client(t), "shared", 3, time.Minute)

	remaining := func(l *Limiter) int {
		t.Helper()
		n, err := l.Remaining(ctx)
		require.NoError(t, err)
		return n
	}
	assert.Equal(t, 3, remaining(a))
	ok, err := a.Allow(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, 2, remaining(b), "b sees a's call")
	p, err := b.Acquire(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, remaining(a))
	p.Cancel()
	assert.Equal(t, 2, remaining(a))

	// The pause's wait is bounded by the time that passed since PauseUntil,
	// measured, so that no load on the machine can break the check.
	const pause = 300 * time.Millisecond
	start := time.Now()
	a.PauseUntil(start.Add(pause))
	assert.Equal(t, 0, remaining(b), "a pause holds every process back")
	refused := allow(t, b)
	assert.False(t, refused.ok())
	assert.GreaterOrEqual(t, refused.wait, pause-time.Since(start)-time.Millisecond)
	assert.LessOrEqual(t, refused.wait, pause)

	a.PauseUntil(time.Now().Add(time.Millisecond)) // shorter: no effect
	assert.GreaterOrEqual(t, allow(t, b).wait, pause-time.Since(start)-time.Millisecond)
	a.PauseUntil(time.Now().Add(-time.Second)) // past: no effect
	if time.Since(start) < pause-10*time.Millisecond {
		assert.Equal(t, 0, remaining(b))
	}

	require.NoError(t, b.Wait(ctx), "the pause ends by itself")
	assert.Equal(t, 1, remaining(a))
}

func TestWaitContext(t *testing.T) {
	s := startRedis(t)
	c := s.Client(t)
	const w = 300 * time.Millisecond
	l := newTestLimiter(t, c, "wait", 1, w)

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l.Wait(cancelled), context.Canceled)
	_, err := l.Acquire(cancelled)
	assert.ErrorIs(t, err, context.Canceled)
	n, err := l.Remaining(context.Background())
	require.NoError(t, err)
	require.Equal(t, 1, n, "a failed Wait takes no slot")

	require.True(t, allow(t, l).ok())

	// The next slot frees in ~300ms: a 100ms deadline fails at once.
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = l.Wait(short)
	assert.ErrorIs(t, err, limiter.ErrWouldExceedDeadline)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	var de *limiter.DeadlineError
	require.ErrorAs(t, err, &de)
	assert.Positive(t, de.Wait, "how long the call would have waited")
	assert.True(t, err.(interface{ Timeout() bool }).Timeout(), "the error itself is a timeout")
	_, nonRetriable := err.(interface{ NonRetriable() })
	assert.True(t, nonRetriable)
	assert.Less(t, time.Since(start), 80*time.Millisecond, "fails fast, before the deadline")
	_, err = l.Acquire(short)
	assert.ErrorIs(t, err, limiter.ErrWouldExceedDeadline)

	// Cancelled while waiting.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	assert.ErrorIs(t, l.Wait(ctx), context.Canceled)

	// Waiting takes one script run to learn the wait and one to be
	// admitted: a timer, no polling.
	require.NoError(t, c.ConfigResetStat(context.Background()).Err())
	require.NoError(t, l.Wait(context.Background()))
	assert.Equal(t, 2, scriptCalls(t, c))

	require.NoError(t, c.ConfigResetStat(context.Background()).Err())
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, scriptCalls(t, c), "Acquire waits on a timer too")
	p.Cancel()
}

// scriptCalls returns how many EVALSHA and EVAL the server ran since the last
// CONFIG RESETSTAT.
func scriptCalls(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	require.NoError(t, err)
	total := 0
	for line := range strings.SplitSeq(info, "\n") {
		var calls int
		for _, cmd := range []string{"cmdstat_evalsha:", "cmdstat_eval:"} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), cmd); ok {
				_, err := fmt.Sscanf(rest, "calls=%d", &calls)
				require.NoError(t, err)
				total += calls
			}
		}
	}
	return total
}

func TestKeys(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	const w = 500 * time.Millisecond

	def := newTestLimiter(t, c, "api", 5, w)
	assert.Equal(t, []string{"limiter:{api}:log", "limiter:{api}:pause", "limiter:{api}:fresh"}, def.keys)

	const lease = 3 * time.Second
	l := newTestLimiter(t, c, "api", 5, w, WithPrefix("svc:"), WithWindow(9, 2*w), WithLease(lease))
	assert.Equal(t, []string{"svc:{api}:log", "svc:{api}:pause", "svc:{api}:fresh"}, l.keys)

	require.True(t, allow(t, l).ok())
	p, err := l.Acquire(ctx)
	require.NoError(t, err)
	defer p.Cancel()
	l.PauseUntil(time.Now().Add(time.Second))

	keys, err := c.Keys(ctx, "*").Result()
	require.NoError(t, err)
	assert.Subset(t, l.keys, keys, "only the prefixed keys; the default prefix was never used")
	assert.Subset(t, keys, l.keys[:2], "the log and the pause")

	// Every key expires by itself: the log after the longest window or the
	// lease, whichever is longer, plus an eighth of the longest window; the
	// pause at its end; the fresh key within that eighth.
	for key, want := range map[string][2]time.Duration{l.keys[0]: {2 * w, lease + 2*w/8}, l.keys[1]: {0, time.Second}} {
		ttl := c.PTTL(ctx, key).Val()
		assert.Greater(t, ttl, want[0], key)
		assert.LessOrEqual(t, ttl, want[1], key)
	}
	if ttl := c.PTTL(ctx, l.keys[2]).Val(); ttl != -2 { // gone already under load
		assert.Positive(t, ttl, "the fresh key expires")
		assert.Less(t, ttl, 2*w/8)
	}

	// Limiters with another prefix do not share the quota.
	assert.Equal(t, 5, remainingOf(t, def))
}

func remainingOf(t *testing.T, l *Limiter) int {
	t.Helper()
	n, err := l.Remaining(context.Background())
	require.NoError(t, err)
	return n
}

func TestIDsUnique(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		id := newID()
		require.False(t, seen[id], id)
		seen[id] = true
		assert.True(t, strings.HasPrefix(id, processID))
	}
	assert.Len(t, processID, 17, "8 random bytes in hex and a colon")
}

// FuzzNew checks New against its contract for any options: an error in the
// package's words, or a limiter whose rules are valid and whose keys share
// one hash tag.
func FuzzNew(f *testing.F) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1}) // New's one call (CONFIG GET) fails at once
	f.Cleanup(func() { _ = c.Close() })
	f.Add("api", "svc:", 5, int64(time.Second), 9, int64(1500*time.Millisecond), int64(time.Minute))
	f.Add("api", "", 5, int64(time.Second), 10, int64(1500*time.Millisecond), int64(time.Second))
	f.Add("a{b}", "p", 1, int64(1), 1, int64(2), int64(-1))
	f.Add("k", "p", 1<<62, int64(1), 1<<62, int64(1<<62), int64(1))
	f.Fuzz(func(t *testing.T, key, prefix string, n1 int, w1 int64, n2 int, w2 int64, lease int64) {
		l, err := New(c, key, n1, time.Duration(w1), WithWindow(n2, time.Duration(w2)),
			WithPrefix(prefix), WithLease(time.Duration(lease)))
		if n1 <= 0 || n2 <= 0 || w1 <= 0 || w2 <= 0 || lease <= 0 || key == "" ||
			strings.ContainsAny(key+prefix, "{}") {
			require.Error(t, err)
			require.Nil(t, l)
			require.True(t, strings.HasPrefix(err.Error(), "redisstore: "), err.Error())
			return
		}
		// The second rule is redundant when n1*ceil(w2/w1) <= n2, in exact arithmetic.
		k := new(big.Int).Add(big.NewInt(w2), big.NewInt(w1-1))
		k.Div(k, big.NewInt(w1))
		k.Mul(k, big.NewInt(int64(n1)))
		if k.Cmp(big.NewInt(int64(n2))) <= 0 {
			require.ErrorContains(t, err, "is no tighter than")
			return
		}
		require.NoError(t, err)
		for _, name := range l.keys {
			require.True(t, strings.HasPrefix(name, prefix+"{"+key+"}:"), name)
		}
		for i, a := range l.ruleArgs {
			if i%2 == 0 {
				require.Negative(t, a.(int64), "minus the limit")
			} else {
				require.Positive(t, a.(int64), "the window")
			}
		}
	})
}

// TestFastPathPrunesAndKeepsTTL admits for several windows on the fast
// path, which prunes the log and sets its TTL only when the TTL has fallen
// below what the log must have left: still, after the last admission, the
// log holds nothing older than the longest window and the slack, and it
// expires no earlier than the longest window after it.
func TestFastPathPrunesAndKeepsTTL(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	const w = 40 * time.Millisecond
	l := newTestLimiter(t, c, "fast", 1<<20, w, WithLease(w))
	slack := us(w) / 8
	var first, last int64
	for calls := 0; last < first+4*us(w) || calls < 100; calls++ {
		res, err := l.decide(ctx, opAllow, nextSeq())
		require.NoError(t, err)
		require.True(t, res.ok())
		if first == 0 {
			first = res.at
		}
		last = res.at
	}
	stale, err := c.ZCount(ctx, l.keys[0], "1", strconv.FormatInt(last-us(w)-slack, 10)).Result()
	require.NoError(t, err)
	assert.Zero(t, stale, "pruned within the slack")
	expiry, err := c.Do(ctx, "PEXPIRETIME", l.keys[0]).Int64()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, expiry*1000, last+us(w), "the log outlives its newest call's window")
}
