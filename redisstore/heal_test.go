package redisstore

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// maxInWindow returns the most of the sorted server times (µs) that lie in
// one interval [t, t+w).
func maxInWindow(times []int64, w time.Duration) int {
	most, j := 0, 0
	for i := range times {
		for j < len(times) && times[j] < times[i]+us(w) {
			j++
		}
		most = max(most, j-i)
	}
	return most
}

func TestMaxInWindow(t *testing.T) {
	assert.Equal(t, 0, maxInWindow(nil, time.Second))
	assert.Equal(t, 2, maxInWindow([]int64{0, 999_999, 1_000_000}, time.Second))
	assert.Equal(t, 3, maxInWindow([]int64{0, 1, 2, 1_000_000}, time.Second))
}

const (
	healLimit     = 20
	healWindow    = 500 * time.Millisecond
	healProcesses = 3
)

// sharedRun runs callers in three processes' worth of limiters (each with
// its own client) on one quota of 20 per 500ms, applies fault after three
// windows, runs four more, and checks that no window held more than the
// limit plus the number of processes and that admissions went on after the
// hold. It returns the server times of every admission and of the fault.
func sharedRun(t *testing.T, s *redisServer, key string, fault func()) (times []int64, faultAt int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var limiters []*Limiter
	for range healProcesses {
		limiters = append(limiters, newTestLimiter(t, s.Client(t), key, healLimit, healWindow, WithTimeout(2*time.Second)))
	}
	collect := runCallers(ctx, limiters)
	c := s.Client(t)
	start := serverNow(t, c)
	awaitServerTime(t, c, start+us(3*healWindow))
	faultAt = serverNow(t, c)
	fault()
	awaitServerTime(t, c, faultAt+us(4*healWindow))
	cancel()
	times = collect()

	most := maxInWindow(times, healWindow)
	after := 0
	for _, at := range times {
		if at > faultAt+us(2*healWindow) {
			after++
		}
	}
	t.Logf("%d admitted, at most %d in a window of %v (limit %d, %d processes), %d in the last two windows",
		len(times), most, healWindow, healLimit, healProcesses, after)
	assert.LessOrEqual(t, most, healLimit+healProcesses, "over by no more than the number of processes")
	assert.GreaterOrEqual(t, most, healLimit, "the quota was used")
	assert.Positive(t, after, "admitting again after the hold")
	return times, faultAt
}

// runCallers starts three callers on each limiter until ctx ends: one
// acquires and is done at once, one waits, one polls Allow at its own pace,
// so that calls arrive all through the window, as callers' own timing makes
// them. Errors (while a fault lasts) are retried. collect waits for the
// callers and returns the sorted server times of the admissions.
func runCallers(ctx context.Context, limiters []*Limiter) (collect func() []int64) {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		times []int64
	)
	for _, l := range limiters {
		for i := range 3 {
			wg.Go(func() {
				for ctx.Err() == nil {
					at, err := callOnce(ctx, l, i)
					if err != nil {
						if ctx.Err() == nil {
							time.Sleep(5 * time.Millisecond) // Redis is away; don't spin
						}
						continue
					}
					if at != 0 {
						mu.Lock()
						times = append(times, at)
						mu.Unlock()
					}
				}
			})
		}
	}
	return func() []int64 {
		wg.Wait()
		slices.Sort(times)
		return times
	}
}

// callOnce makes one call of caller kind i (0 acquire and done, 1 wait,
// 2 poll), and returns the server time it counts from, 0 if refused.
func callOnce(ctx context.Context, l *Limiter, kind int) (int64, error) {
	seq := nextSeq()
	switch kind {
	case 0:
		if _, err := admitWaiting(ctx, l, opAcquire, seq); err != nil {
			return 0, err
		}
		return l.done(seq)
	case 1:
		res, err := admitWaiting(ctx, l, opWait, seq)
		return res.at, err
	}
	time.Sleep(3 * time.Millisecond) // the caller's pace
	res, err := l.decide(ctx, opAllow, seq)
	if err != nil || !res.ok() {
		return 0, err
	}
	return res.at, nil
}

func serverNow(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	tm, err := c.Time(context.Background()).Result()
	require.NoError(t, err)
	return tm.UnixMicro()
}

// awaitServerTime returns once Redis's clock reads at least at (µs); the
// server may be restarting meanwhile.
func awaitServerTime(t *testing.T, c *redis.Client, at int64) {
	t.Helper()
	for {
		if tm, err := c.Time(context.Background()).Result(); err == nil && tm.UnixMicro() >= at {
			return
		}
		time.Sleep(10 * time.Millisecond) // real time: Redis's clock has to move
	}
}

func TestHealFlushDB(t *testing.T) {
	s := startRedis(t)
	c := s.Client(t)
	sharedRun(t, s, "flush", func() { require.NoError(t, c.FlushDB(context.Background()).Err()) })
}

func TestHealRestart(t *testing.T) {
	s := startRedis(t)
	sharedRun(t, s, "restart", func() { s.Stop(); s.Start() })
}

// TestHealEviction evicts the limiter's keys the way the issue saw it:
// volatile-lru under memory pressure, where they are the only keys with an
// expiry.
func TestHealEviction(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := s.Client(t)
	l := newTestLimiter(t, c, "evict", 5, time.Second)
	require.NoError(t, l.EvictionRisk(), "noeviction, the default")

	sharedRun(t, s, "evict", func() {
		used := usedMemory(t, c)
		require.NoError(t, c.ConfigSet(ctx, "maxmemory-policy", "volatile-lru").Err())
		require.NoError(t, c.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used+256<<10, 10)).Err())
		big := strings.Repeat("x", 8<<10)
		for i := 0; evictedKeys(t, c) == 0; i++ {
			if err := c.Set(ctx, "junk:"+strconv.Itoa(i), big, 0).Err(); err != nil {
				require.True(t, strings.HasPrefix(err.Error(), "OOM"), err.Error())
				break
			}
		}
		assert.Positive(t, evictedKeys(t, c), "Redis evicted keys")
		require.NoError(t, c.ConfigSet(ctx, "maxmemory", "0").Err())
	})

	risky, err := New(c, "evict", 5, time.Second)
	require.NoError(t, err, "a risky policy is no error of New")
	assert.NoError(t, risky.EvictionRisk(), "maxmemory is 0 again: no risk")
	require.NoError(t, c.ConfigSet(ctx, "maxmemory", "100mb").Err())
	risky, err = New(c, "evict", 5, time.Second)
	require.NoError(t, err)
	require.ErrorIs(t, risky.EvictionRisk(), ErrEvictionRisk)
	assert.ErrorContains(t, risky.EvictionRisk(), "maxmemory-policy is volatile-lru")
}

func TestEvictionRiskSettings(t *testing.T) {
	assert.NoError(t, evictionRisk("0", "allkeys-lru"), "no memory limit: nothing is evicted")
	assert.NoError(t, evictionRisk("1000", "noeviction"))
	assert.NoError(t, evictionRisk("", ""), "CONFIG GET refused")
	for _, p := range []string{"allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"} {
		err := evictionRisk("1000", p)
		assert.ErrorIs(t, err, ErrEvictionRisk, p)
		assert.ErrorContains(t, err, p)
	}
}

func info(t *testing.T, c *redis.Client, section, field string) int64 {
	t.Helper()
	s, err := c.Info(context.Background(), section).Result()
	require.NoError(t, err)
	for line := range strings.SplitSeq(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no %s in INFO %s", field, section)
	return 0
}

func usedMemory(t *testing.T, c *redis.Client) int64  { return info(t, c, "memory", "used_memory") }
func evictedKeys(t *testing.T, c *redis.Client) int64 { return info(t, c, "stats", "evicted_keys") }
