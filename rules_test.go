package limiter

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// step is one row of a boundary table: at t0+at, a call of weight n (1
// when zero) is admitted or not.
type step struct {
	at   time.Duration
	n    int
	want bool
}

func runSteps(t *testing.T, l *Limiter, c *ManualClock, steps []step) {
	t.Helper()
	for _, s := range steps {
		c.Set(t0.Add(s.at))
		n := max(s.n, 1)
		assert.Equal(t, s.want, l.AllowN(n), "AllowN(%d) at t0+%v", n, s.at)
	}
}

func TestBucketBoundary(t *testing.T) {
	// A bucket of 3 draining one each 100 ms, under a window that never binds.
	l, c := newManual(t, 1000, time.Hour, WithBucket(3, 100*time.Millisecond))
	runSteps(t, l, c, []step{
		{0, 0, true}, {0, 0, true}, {0, 0, true}, // the burst
		{0, 0, false},
		{100*time.Millisecond - 1, 0, false}, // a full bucket: exactly every later
		{100 * time.Millisecond, 0, true},
		{100 * time.Millisecond, 0, false},
		{150 * time.Millisecond, 0, false},
		{200 * time.Millisecond, 0, true},
		{time.Second, 0, true}, {time.Second, 0, true}, {time.Second, 0, true}, // drained: a burst again
		{time.Second, 0, false},
	})
}

func TestBucketDrainsContinuously(t *testing.T) {
	// Burst 2, one per 100 ms: a half-drained bucket admits after half of
	// that, not at the next whole step.
	l, c := newManual(t, 1000, time.Hour, WithBucket(2, 100*time.Millisecond))
	runSteps(t, l, c, []step{
		{0, 0, true},                      // holds 1
		{50 * time.Millisecond, 0, true},  // drained to 0.5, holds 1.5
		{100 * time.Millisecond, 0, true}, // drained to 1.0 = burst-1, holds 2
		{150*time.Millisecond - 1, 0, false},
		{150 * time.Millisecond, 0, false}, // 1.5 > burst-1
		{200*time.Millisecond - 1, 0, false},
		{200 * time.Millisecond, 0, true},
	})
}

func TestBucketWithWindow(t *testing.T) {
	// 100 per minute, at most 6 at once and one per 100 ms: the nginx
	// limit_req rate=10r/s burst=5 shape under a minute quota.
	l, c := newManual(t, 100, time.Minute, WithBucket(6, 100*time.Millisecond))
	fill(t, l, 6)
	assert.False(t, l.Allow())
	n := 6
	for i := 1; n < 100; i++ {
		c.Set(t0.Add(time.Duration(i) * 100 * time.Millisecond))
		require.True(t, l.Allow(), "one each 100 ms, call %d", n+1)
		require.False(t, l.Allow())
		n++
	}
	c.Set(t0.Add(59 * time.Second))
	assert.False(t, l.Allow(), "the bucket is empty, but 100 calls fill the minute")
	c.Set(t0.Add(time.Minute))
	assert.Equal(t, 6, l.Remaining(), "the first 6 left the window; the bucket allows 6")
}

func TestBucketCountsFromDone(t *testing.T) {
	l, c := newManual(t, 1000, time.Hour, WithBucket(1, time.Second))
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	c.Advance(5 * time.Second)
	assert.False(t, l.Allow(), "a permit in flight fills the bucket")
	p.Done()
	c.Advance(time.Second - 1)
	assert.False(t, l.Allow(), "the bucket drains from Done")
	c.Advance(1)
	assert.True(t, l.Allow())
}

func TestWeights(t *testing.T) {
	l, c := newManual(t, 10, time.Second, WithBucket(8, 100*time.Millisecond))
	runSteps(t, l, c, []step{
		{0, 5, true},
		{0, 4, false}, // the bucket holds 5 of 8
		{0, 3, true},
		{0, 1, false},
		{300*time.Millisecond - 1, 3, false},
		{300 * time.Millisecond, 3, false}, // the bucket has room, the window holds 8 of 10
		{300 * time.Millisecond, 2, true},
		{time.Second - 1, 1, false},
		{time.Second, 8, true}, // the first 8 left the window, and the bucket drained
	})
}

func TestImpossibleWeights(t *testing.T) {
	l, _ := newManual(t, 10, time.Second, WithWindow(50, time.Minute), WithBucket(6, time.Second))
	for _, n := range []int{0, -1, 7, 11} {
		assert.False(t, l.AllowN(n), "AllowN(%d)", n)
		err := l.WaitN(context.Background(), n)
		require.Error(t, err, "WaitN(%d) fails at once", n)
		assert.Contains(t, err.Error(), "limiter: weight")
		_, err = l.AcquireN(context.Background(), n)
		require.Error(t, err, "AcquireN(%d)", n)
	}
	assert.True(t, l.AllowN(6), "the heaviest possible call")
}

func TestWaitFIFOAcrossWeights(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 4, time.Second)
		fill(t, l, 4)
		heavy := startWaitN(t, l, 4)
		light := startWaitN(t, l, 1)
		c.Advance(time.Second - 1)
		synctest.Wait()
		requireBlocked(t, heavy)
		requireBlocked(t, light)
		c.Advance(1)
		synctest.Wait()
		require.NoError(t, <-heavy)
		requireBlocked(t, light) // the light call never passes the heavy one
		c.Advance(time.Second)
		require.NoError(t, <-light)
	})
}

func startWaitN(t *testing.T, l *Limiter, n int) <-chan error {
	t.Helper()
	before := l.Stats().Waiting
	done := make(chan error, 1)
	go func() { done <- l.WaitN(context.Background(), n) }()
	synctest.Wait()
	require.Equal(t, before+1, l.Stats().Waiting, "the caller is not queued")
	return done
}

func TestWaitersAdmittedByWhoeverWakesFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Three waiters due at the same instant, of which only the last
		// has a goroutine running: when it wakes it admits the two before
		// it as well as itself, so no waiter waits for another to wake.
		l, c := newManual(t, 3, time.Second)
		fill(t, l, 3)
		var ws []*waiter
		for range 3 {
			w := &waiter{ctx: context.Background(), n: 1, ready: make(chan struct{}, 1)}
			l.mu.Lock()
			l.queue.push(w)
			l.unlock()
			ws = append(ws, w)
		}
		done := make(chan error, 1)
		go func() {
			_, err := l.sleep(ws[2])
			done <- err
		}()
		synctest.Wait()
		requireBlocked(t, done)
		c.Advance(time.Second)
		synctest.Wait()
		require.NoError(t, <-done)
		assert.True(t, ws[0].granted && ws[1].granted, "admitted on their behalf")
		assert.Equal(t, 3, l.Stats().InWindow)
		assert.Equal(t, 0, l.Stats().Waiting)
	})
}

func TestRefusalNeedsNoLock(t *testing.T) {
	l, c := newManual(t, 1, time.Second)
	require.True(t, l.Allow())
	// Admitting leaves the gate where it was, a lower bound; the first
	// refusal, under the lock, publishes it, and a reading before it is
	// then refused without the lock.
	assert.Equal(t, int64(math.MinInt64), l.gate.Load())
	assert.False(t, l.Allow())
	assert.Equal(t, int64(time.Second), l.gate.Load())
	assert.False(t, l.Allow())
	assert.Equal(t, 0, l.Remaining())
	c.Advance(time.Second)
	assert.True(t, l.Allow(), "the gate opens when time frees the slot")
}

func TestGateFollowsEveryChange(t *testing.T) {
	l, c := newManual(t, 2, time.Second)
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	require.True(t, l.Allow())
	assert.False(t, l.Allow(), "a permit in flight holds the gate")
	p.Cancel()
	assert.True(t, l.Allow(), "Cancel reopens it")
	c.Advance(time.Second)
	l.PauseUntil(t0.Add(2 * time.Second))
	assert.False(t, l.Allow(), "PauseUntil closes it")
	c.Advance(time.Second - 1)
	assert.False(t, l.Allow())
	c.Advance(1)
	assert.True(t, l.Allow())
}

func TestDeadlineErrorMethods(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newManual(t, 1, time.Minute)
		fill(t, l, 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := l.Wait(ctx)
		require.ErrorIs(t, err, ErrWouldExceedDeadline)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		var de *DeadlineError
		require.ErrorAs(t, err, &de)
		assert.Equal(t, time.Minute, de.Wait)

		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout())
		ue := &url.Error{Op: "Get", URL: "http://x", Err: err}
		assert.True(t, ue.Timeout(), "url.Error sees a timeout without unwrapping")
		var nr interface{ NonRetriable() }
		assert.True(t, errors.As(err, &nr), "azcore's NonRetriable")
	})
}

type bucketRule struct {
	burst int
	every time.Duration
}

type call struct {
	at time.Duration
	n  int
}

// oracleAdmits decides a call of weight n at now from the definitions,
// given the calls admitted before: every window holds at most limit
// weights in (now-window, now], and every bucket, replayed with a
// continuous drain of one each every, holds at most burst-n before it.
// Bucket levels are kept in time units (a call is every of level), so the
// arithmetic is exact.
func oracleAdmits(windows []rule, buckets []bucketRule, admitted []call, now time.Duration, n int) bool {
	for _, r := range windows {
		sum := n
		for _, a := range admitted {
			if a.at+r.window > now {
				sum += a.n
			}
		}
		if sum > r.limit {
			return false
		}
	}
	for _, b := range buckets {
		var level, last time.Duration
		for _, a := range admitted {
			level = max(0, level-(a.at-last)) + time.Duration(a.n)*b.every
			last = a.at
		}
		level = max(0, level-(now-last))
		if level+time.Duration(n)*b.every > time.Duration(b.burst)*b.every {
			return false
		}
	}
	return true
}

func randomBuckets(rng *rand.Rand) []bucketRule {
	var bs []bucketRule
	for range rng.IntN(3) {
		b := bucketRule{1 + rng.IntN(8), time.Duration(1+rng.IntN(20)) * time.Millisecond}
		implied := false
		for _, o := range bs {
			implied = implied || (o.burst <= b.burst && o.every >= b.every) || (b.burst <= o.burst && b.every >= o.every)
		}
		if !implied {
			bs = append(bs, b)
		}
	}
	return bs
}

// TestPropertyRulesMatchOracle drives limiters with random windows and
// buckets through random schedules of weighted calls on a ManualClock:
// AllowN agrees, call by call, with oracleAdmits. Never more than the
// rules allow, never less.
func TestPropertyRulesMatchOracle(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for trial := range 300 {
		windows, buckets := randomRules(rng), randomBuckets(rng)
		c := NewManualClock(t0)
		opts := []Option{WithClock(c)}
		for _, b := range buckets {
			opts = append(opts, WithBucket(b.burst, b.every))
		}
		l := newRules(t, windows, opts...)
		var admitted []call
		now := time.Duration(0)
		for range 300 {
			switch rng.IntN(4) {
			case 0:
			case 1:
				now += time.Duration(rng.IntN(3)) * time.Millisecond
			default:
				now += time.Duration(rng.Int64N(int64(windows[0].window)))
			}
			c.Set(t0.Add(now))
			n := 1
			if rng.IntN(3) == 0 {
				n = 1 + rng.IntN(4)
			}
			want := oracleAdmits(windows, buckets, admitted, now, n)
			if got := l.AllowN(n); got != want {
				t.Fatalf("trial %d, windows %v, buckets %v: AllowN(%d) at %v = %v, oracle says %v",
					trial, windows, buckets, n, now, got, want)
			}
			if want {
				admitted = append(admitted, call{now, n})
			}
		}
	}
}
