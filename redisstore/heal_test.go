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

// sharedRun runs greedy callers in three processes' worth of limiters (each
// with its own client) on one quota of n per w, applies fault about halfway
// through, and returns the server times of every admission and of the
// fault. Errors while the fault lasts are retried.
func sharedRun(t *testing.T, s *redisServer, key string, fault func()) (times []int64, faultAt int64) {
	t.Helper()
	const (
		n, w      = 20, 500 * time.Millisecond
		processes = 3
		workers   = 3
	)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for range processes {
		l := newTestLimiter(t, s.Client(t), key, n, w, WithTimeout(2*time.Second))
		for i := range workers {
			// One caller of each process acquires and is done at once, one
			// waits, one polls Allow at its own pace, so that calls arrive
			// all through the window, as callers' own timing makes them.
			twoPhase, poll := i == 0, i == 2
			wg.Go(func() {
				for ctx.Err() == nil {
					op, seq := opWait, nextSeq()
					if twoPhase {
						op = opAcquire
					}
					var (
						res result
						err error
					)
					if poll {
						time.Sleep(3 * time.Millisecond) // the caller's pace
						if res, err = l.decide(ctx, opAllow, seq); err == nil && !res.ok() {
							continue
						}
					} else {
						res, err = admitWaiting(ctx, l, op, seq)
					}
					if err == nil && twoPhase {
						res.at, err = l.done(seq)
					}
					if err != nil {
						if ctx.Err() == nil {
							time.Sleep(5 * time.Millisecond) // Redis is away; don't spin
						}
						continue
					}
					mu.Lock()
					times = append(times, res.at)
					mu.Unlock()
				}
			})
		}
	}
	c := s.Client(t)
	now := func() int64 {
		tm, err := c.Time(context.Background()).Result()
		require.NoError(t, err)
		return tm.UnixMicro()
	}
	start := now()
	for now() < start+us(3*w) {
		time.Sleep(10 * time.Millisecond) // real time: Redis's clock has to move
	}
	faultAt = now()
	fault()
	for {
		if tm, err := c.Time(context.Background()).Result(); err == nil && tm.UnixMicro() > faultAt+us(4*w) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	slices.Sort(times)
	most := maxInWindow(times, w)
	after := 0
	for _, at := range times {
		if at > faultAt+us(2*w) {
			after++
		}
	}
	t.Logf("%d admitted, at most %d in a window of %v (limit %d, %d processes), %d in the last two windows", len(times), most, w, n, processes, after)
	assert.LessOrEqual(t, most, n+processes, "over by no more than the number of processes")
	assert.GreaterOrEqual(t, most, n, "the quota was used")
	assert.Positive(t, after, "admitting again after the hold")
	return times, faultAt
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
