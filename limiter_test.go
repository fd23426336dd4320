package limiter

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// t0 is where the tests' clocks start: a whole second, so that Unix-second
// resets in the transport tests give whole waits.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newManual returns a limiter on a ManualClock that reads t0.
func newManual(t *testing.T, limit int, window time.Duration, opts ...Option) (*Limiter, *ManualClock) {
	t.Helper()
	c := NewManualClock(t0)
	l, err := New(limit, window, append([]Option{WithClock(c)}, opts...)...)
	require.NoError(t, err)
	return l, c
}

// fill admits n calls now and fails the test if any is refused.
func fill(t *testing.T, l *Limiter, n int) {
	t.Helper()
	for i := range n {
		require.True(t, l.Allow(), "call %d of %d", i+1, n)
	}
}

func TestDefaults(t *testing.T) {
	assert.Equal(t, 100, DefaultLimit)
	assert.Equal(t, 60*time.Second, DefaultWindow)
}

func TestBoundary(t *testing.T) {
	l, c := newManual(t, DefaultLimit, DefaultWindow)
	fill(t, l, 100)
	steps := []struct {
		at    time.Duration // since t0
		allow bool
	}{
		{0, false}, // the 101st call with the clock frozen
		{59*time.Second + 999*time.Millisecond, false},
		{60*time.Second - time.Nanosecond, false},
		{60 * time.Second, true}, // the first call stops counting at exactly t0+60s
	}
	for _, s := range steps {
		c.Set(t0.Add(s.at))
		assert.Equal(t, s.allow, l.Allow(), "Allow at t0+%v", s.at)
	}
	// At t0+60s the whole burst has left the window: 99 more fit, then none.
	fill(t, l, 99)
	assert.False(t, l.Allow(), "at t0+60s: 100 admitted at this instant")
}

func TestSlidingNotFixedBuckets(t *testing.T) {
	// 3 per 10s. Calls at 0s, 5s, 9s; at 10s only the first leaves.
	l, c := newManual(t, 3, 10*time.Second)
	for _, at := range []time.Duration{0, 5 * time.Second, 9 * time.Second} {
		c.Set(t0.Add(at))
		require.True(t, l.Allow())
	}
	steps := []struct {
		at    time.Duration
		allow bool
	}{
		{9*time.Second + 500*time.Millisecond, false},
		{10 * time.Second, true},  // 0s left
		{11 * time.Second, false}, // 5s, 9s, 10s count
		{15 * time.Second, true},  // 5s left
		{19 * time.Second, true},  // 9s left
		{19 * time.Second, false},
	}
	for _, s := range steps {
		c.Set(t0.Add(s.at))
		assert.Equal(t, s.allow, l.Allow(), "Allow at t0+%v", s.at)
	}
}

func TestNewRejectsNonsense(t *testing.T) {
	c := NewManualClock(t0)
	tests := []struct {
		name   string
		limit  int
		window time.Duration
		opts   []Option
		want   string
	}{
		{"zero limit", 0, time.Minute, nil, "limit must be positive, got 0"},
		{"negative limit", -5, time.Minute, nil, "limit must be positive, got -5"},
		{"zero window", 10, 0, nil, "window must be positive, got 0s"},
		{"negative window", 10, -time.Second, nil, "window must be positive, got -1s"},
		{"nil clock", 10, time.Minute, []Option{WithClock(nil)}, "clock must not be nil"},
		{"nil option", 10, time.Minute, []Option{nil}, "nil Option"},
		{"bad extra limit", 10, time.Minute, []Option{WithWindow(0, time.Hour)}, "limit must be positive"},
		{"bad extra window", 10, time.Minute, []Option{WithWindow(100, -time.Hour)}, "window must be positive"},
		{"equal rule", 100, time.Minute, []Option{WithWindow(100, time.Minute)}, "no tighter"},
		{"looser rule", 100, time.Minute, []Option{WithWindow(200, time.Minute)}, "no tighter"},
		{"shorter and equal", 100, time.Minute, []Option{WithWindow(100, time.Second)}, "no tighter"},
		{"implied by repetition", 100, time.Minute, []Option{WithWindow(6000, time.Hour)}, "no tighter"},
		{"looser rule first", 200, time.Minute, []Option{WithWindow(100, time.Minute)}, "rule 200 per 1m0s is no tighter than rule 100 per 1m0s"},
		{"looser rule second", 100, time.Minute, []Option{WithWindow(200, time.Minute)}, "rule 200 per 1m0s is no tighter than rule 100 per 1m0s"},
		{"zero burst", 10, time.Minute, []Option{WithBucket(0, time.Second)}, "burst must be positive, got 0"},
		{"negative every", 10, time.Minute, []Option{WithBucket(5, -time.Second)}, "every must be positive, got -1s"},
		{"equal buckets", 10, time.Minute, []Option{WithBucket(5, time.Second), WithBucket(5, time.Second)}, "no tighter"},
		{"looser bucket first", 10, time.Minute, []Option{WithBucket(9, time.Second), WithBucket(5, 2*time.Second)}, "rule bucket of 9, one per 1s is no tighter than rule bucket of 5, one per 2s"},
		{"looser bucket second", 10, time.Minute, []Option{WithBucket(5, 2*time.Second), WithBucket(9, time.Second)}, "rule bucket of 9, one per 1s is no tighter than rule bucket of 5, one per 2s"},
		{"negative waiters", 10, time.Minute, []Option{WithMaxWaiters(-1)}, "must not be negative, got -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(tt.limit, tt.window, append([]Option{WithClock(c)}, tt.opts...)...)
			assert.Nil(t, l)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "limiter: "), err.Error())
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestNewAcceptsTighterRules(t *testing.T) {
	for _, opt := range []Option{
		WithWindow(1500, time.Hour), // 100/min alone would allow 6000/h
		WithWindow(5999, time.Hour),
		WithWindow(10, time.Second), // tighter than the first
		WithMaxWaiters(0),
		WithBucket(6, 100*time.Millisecond),
		WithBucket(1000, time.Nanosecond), // a bucket never makes a window an error
		WithBucket(1, time.Hour),
	} {
		l, err := New(100, time.Minute, opt)
		require.NoError(t, err)
		require.NotNil(t, l)
	}
}

func TestSeveralRules(t *testing.T) {
	// 3 per second and 5 per 10 seconds.
	l, c := newManual(t, 3, time.Second, WithWindow(5, 10*time.Second))
	fill(t, l, 3)
	assert.False(t, l.Allow(), "first rule binds")
	c.Advance(time.Second)
	fill(t, l, 2)
	assert.False(t, l.Allow(), "second rule binds with the first one free")
	assert.Equal(t, 0, l.Remaining())
	c.Set(t0.Add(10*time.Second - time.Nanosecond))
	assert.False(t, l.Allow())
	c.Set(t0.Add(10 * time.Second))
	assert.Equal(t, 3, l.Remaining(), "the first 3 calls left; the first rule caps it")
	fill(t, l, 3)
	assert.False(t, l.Allow())
}

func TestClockBackwards(t *testing.T) {
	l, c := newManual(t, 2, time.Minute)
	c.Advance(time.Hour)
	fill(t, l, 2)
	c.Set(t0) // an hour back
	assert.False(t, l.Allow(), "a clock set back must not free slots")
	assert.Equal(t, 0, l.Remaining())
	c.Set(t0.Add(time.Hour + 59*time.Second))
	assert.False(t, l.Allow())
	c.Set(t0.Add(time.Hour + time.Minute))
	fill(t, l, 2)
	assert.False(t, l.Allow())

	// A permit done while the clock reads earlier is logged at the latest
	// instant seen, so it counts for a full window from there.
	c.Set(t0.Add(2 * time.Hour))
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	c.Set(t0)
	p.Done()
	c.Set(t0.Add(2*time.Hour + time.Minute - time.Nanosecond))
	assert.Equal(t, 1, l.Remaining())
	c.Set(t0.Add(2*time.Hour + time.Minute))
	assert.Equal(t, 2, l.Remaining())
}

func TestRemaining(t *testing.T) {
	l, c := newManual(t, 5, time.Second)
	assert.Equal(t, 5, l.Remaining())
	fill(t, l, 2)
	assert.Equal(t, 3, l.Remaining())
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, l.Remaining(), "a permit in flight holds a slot")
	c.Advance(time.Second)
	assert.Equal(t, 4, l.Remaining(), "the two calls left; the permit still holds")
	p.Cancel()
	assert.Equal(t, 5, l.Remaining())
}

func TestAcquireDoneCountsFromDone(t *testing.T) {
	l, c := newManual(t, 1, time.Minute)
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	assert.False(t, l.Allow(), "in flight holds the slot")
	c.Advance(10 * time.Minute)
	assert.False(t, l.Allow(), "in flight holds the slot for as long as it takes")
	assert.Equal(t, 1, l.Stats().InFlight)

	p.Done() // at t0+10m
	st := l.Stats()
	assert.Equal(t, 0, st.InFlight)
	assert.Equal(t, 1, st.InWindow)
	c.Set(t0.Add(11*time.Minute - time.Nanosecond))
	assert.False(t, l.Allow(), "the call counts for a full window from Done")
	p.Done()   // no-op
	p.Cancel() // no-op
	assert.False(t, l.Allow(), "a second Done or Cancel changes nothing")
	c.Set(t0.Add(11 * time.Minute))
	assert.True(t, l.Allow())
}

func TestAcquireCancelReturnsSlot(t *testing.T) {
	l, _ := newManual(t, 2, time.Minute)
	p1, err := l.Acquire(context.Background())
	require.NoError(t, err)
	p2, err := l.Acquire(context.Background())
	require.NoError(t, err)
	assert.False(t, l.Allow())
	p1.Cancel()
	assert.True(t, l.Allow(), "a cancelled permit returns its slot at once")
	p1.Cancel()
	p1.Done()
	assert.False(t, l.Allow(), "a second Cancel or a Done after it changes nothing")
	p2.Done()
	assert.False(t, l.Allow())
	assert.Equal(t, 2, l.Stats().InWindow)
}

// startWait starts a Wait or Acquire in a goroutine and waits until it is
// queued. It runs inside a synctest bubble. The returned channel yields its result.
func startWait(t *testing.T, l *Limiter, ctx context.Context, acquire bool) <-chan error {
	t.Helper()
	before := l.Stats().Waiting
	done := make(chan error, 1)
	go func() {
		if acquire {
			p, err := l.Acquire(ctx)
			if err == nil {
				p.Done()
			}
			done <- err
			return
		}
		done <- l.Wait(ctx)
	}()
	synctest.Wait()
	require.Equal(t, before+1, l.Stats().Waiting, "the caller is not queued")
	return done
}

func requireBlocked(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("returned early with %v", err)
	default:
	}
}

func TestWaitWakesAtWindowEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 2, time.Minute)
		fill(t, l, 2)
		done := startWait(t, l, context.Background(), false)
		require.NoError(t, c.BlockUntil(context.Background(), 1))
		c.Advance(time.Minute - time.Nanosecond)
		requireBlocked(t, done)
		c.Advance(time.Nanosecond)
		require.NoError(t, <-done)
		assert.Equal(t, 1, l.Remaining(), "both slots freed, the waiter took one")
		assert.Equal(t, 0, c.Waiters(), "no timer left behind")
	})
}

func TestWaitFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 1, time.Second)
		fill(t, l, 1)
		const n = 5
		var (
			mu    sync.Mutex
			order []int
		)
		done := make([]<-chan error, n)
		for i := range n {
			ch := make(chan error, 1)
			before := l.Stats().Waiting
			go func() {
				err := l.Wait(context.Background())
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				ch <- err
			}()
			synctest.Wait()
			require.Equal(t, before+1, l.Stats().Waiting)
			done[i] = ch
		}
		assert.False(t, l.Allow(), "Allow must not jump the queue")
		for i := range n {
			require.NoError(t, c.BlockUntil(context.Background(), 1))
			c.Advance(time.Second)
			require.NoError(t, <-done[i])
			assert.False(t, l.Allow(), "after waiter %d: slot taken", i)
		}
		assert.Equal(t, []int{0, 1, 2, 3, 4}, order)
	})
}

func TestWaitCancelHandsSlotOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 1, time.Second)
		fill(t, l, 1)
		ctx, cancel := context.WithCancel(context.Background())
		first := startWait(t, l, ctx, false)
		second := startWait(t, l, context.Background(), true)
		cancel()
		assert.ErrorIs(t, <-first, context.Canceled)
		synctest.Wait()
		require.Equal(t, 1, l.Stats().Waiting)
		c.Advance(time.Second)
		require.NoError(t, <-second, "the next waiter gets the slot")
		assert.Equal(t, 1, l.Stats().InWindow, "the cancelled waiter took no slot")
	})
}

func TestWaitCancelledContext(t *testing.T) {
	l, _ := newManual(t, 1, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l.Wait(ctx), context.Canceled)
	_, err := l.Acquire(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, l.Remaining(), "a cancelled call takes no slot")
}

func TestWaitDeadlineFailsFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		c := NewManualClock(now)
		l, err := New(2, time.Minute, WithClock(c))
		require.NoError(t, err)
		fill(t, l, 2)

		ctx, cancel := context.WithDeadline(context.Background(), now.Add(30*time.Second))
		defer cancel()
		err = l.Wait(ctx)
		require.ErrorIs(t, err, ErrWouldExceedDeadline)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		_, err = l.Acquire(ctx)
		assert.ErrorIs(t, err, ErrWouldExceedDeadline)
		assert.Equal(t, 0, l.Stats().Waiting)
		assert.Equal(t, 0, c.Waiters(), "failing fast sleeps on no timer")

		// A deadline after the slot frees waits.
		ctx2, cancel2 := context.WithDeadline(context.Background(), now.Add(61*time.Second))
		defer cancel2()
		done := startWait(t, l, ctx2, false)
		// The second waiter would need the slot after it, at +60s too, and the
		// third a whole window later.
		ctx3, cancel3 := context.WithDeadline(context.Background(), now.Add(61*time.Second))
		defer cancel3()
		second := startWait(t, l, ctx3, false)
		assert.ErrorIs(t, l.Wait(ctx3), ErrWouldExceedDeadline, "third in line: no slot before +120s")
		require.NoError(t, c.BlockUntil(context.Background(), 1))
		c.Advance(time.Minute)
		require.NoError(t, <-done)
		require.NoError(t, <-second)
	})
}

func TestWaitPastDeadlineWithSlotFree(t *testing.T) {
	l, _ := newManual(t, 1, time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel()
	err := l.Wait(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, 1, l.Remaining(), "an expired context takes no slot")
}

func TestQueueFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 1, time.Second, WithMaxWaiters(1))
		fill(t, l, 1)
		done := startWait(t, l, context.Background(), false)
		assert.ErrorIs(t, l.Wait(context.Background()), ErrQueueFull)
		_, err := l.Acquire(context.Background())
		assert.ErrorIs(t, err, ErrQueueFull)
		c.Advance(time.Second)
		require.NoError(t, <-done)

		l0, _ := newManual(t, 1, time.Second, WithMaxWaiters(0))
		require.NoError(t, l0.Wait(context.Background()), "a free slot needs no queue")
		assert.ErrorIs(t, l0.Wait(context.Background()), ErrQueueFull)
	})
}

func TestPauseUntil(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 10, time.Second)
		l.PauseUntil(t0.Add(5 * time.Second))
		l.PauseUntil(t0.Add(2 * time.Second)) // shorter: ignored
		assert.False(t, l.Allow())
		assert.Equal(t, 0, l.Remaining())
		assert.Equal(t, t0.Add(5*time.Second), l.Stats().PausedUntil)

		done := startWait(t, l, context.Background(), false)
		require.NoError(t, c.BlockUntil(context.Background(), 1))
		c.Advance(5*time.Second - time.Nanosecond)
		assert.False(t, l.Allow())
		requireBlocked(t, done)
		c.Advance(time.Nanosecond)
		require.NoError(t, <-done)
		assert.True(t, l.Allow())
		assert.True(t, l.Stats().PausedUntil.IsZero())
	})
}

func TestWaitForPermitInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, c := newManual(t, 1, time.Second)
		p, err := l.Acquire(context.Background())
		require.NoError(t, err)
		done := startWait(t, l, context.Background(), false)
		c.Advance(time.Hour)
		requireBlocked(t, done)
		p.Done() // at t0+1h: the slot frees at t0+1h+1s
		require.NoError(t, c.BlockUntil(context.Background(), 1))
		c.Advance(time.Second - time.Nanosecond)
		requireBlocked(t, done)
		c.Advance(time.Nanosecond)
		require.NoError(t, <-done)
	})
}

func TestWaitForPermitCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _ := newManual(t, 1, time.Second)
		p, err := l.Acquire(context.Background())
		require.NoError(t, err)
		done := startWait(t, l, context.Background(), true)
		requireBlocked(t, done)
		p.Cancel()
		require.NoError(t, <-done, "a cancelled permit wakes the head at once")
	})
}

func TestStats(t *testing.T) {
	l, c := newManual(t, 4, time.Minute, WithWindow(10, time.Hour))
	fill(t, l, 2)
	p, err := l.Acquire(context.Background())
	require.NoError(t, err)
	defer p.Cancel()
	c.Advance(time.Second)
	assert.Equal(t, Stats{Limit: 4, Window: time.Minute, InWindow: 2, InFlight: 1, Remaining: 1}, l.Stats())
}

func TestDeadlineErrorIs(t *testing.T) {
	assert.ErrorIs(t, ErrWouldExceedDeadline, context.DeadlineExceeded)
	var plain error = context.DeadlineExceeded
	assert.NotErrorIs(t, plain, ErrWouldExceedDeadline, "the plain context error is not ours")
	assert.NotErrorIs(t, ErrWouldExceedDeadline, context.Canceled)
}

func TestAllowNeverJumpsTheQueue(t *testing.T) {
	l, _ := newManual(t, 5, time.Second)
	// A waiter whose goroutine has not yet run after its slot freed: the
	// slot is free, but it is the waiter's.
	w := &waiter{n: 1, ready: make(chan struct{}, 1)}
	l.mu.Lock()
	l.queue.push(w)
	l.unlock()
	assert.False(t, l.Allow())
	assert.Equal(t, 0, l.Remaining())
	p, err := l.Acquire(expired)
	assert.ErrorIs(t, err, ErrWouldExceedDeadline, "Acquire queues behind it too")
	assert.Nil(t, p)
	l.mu.Lock()
	l.queue.remove(w)
	l.unlock()
	assert.True(t, l.Allow())
}

func TestWaitDeadlineIsRealTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The ManualClock reads t0, far from the bubble's time: a deadline
		// is real time (the bubble's), compared with the wait on the clock.
		l, c := newManual(t, 1, time.Minute)
		fill(t, l, 1)
		short, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.ErrorIs(t, l.Wait(short), ErrWouldExceedDeadline)

		long, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		done := startWait(t, l, long, false)
		c.Advance(time.Minute)
		require.NoError(t, <-done, "a slot a minute away is in time for an hour's timeout")
	})
}

func TestWaitDeadlineExactlyAtSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(1, time.Second)
		require.NoError(t, err)
		fill(t, l, 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		assert.ErrorIs(t, l.Wait(ctx), ErrWouldExceedDeadline, "the context ends as the slot frees")
		assert.Zero(t, time.Since(start), "at once")
	})
}

func TestWaitDeadlineSeveralRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 1 per second and 2 per 3 seconds: after a call at 0, the next two
		// go at 1s and 3s, so a third waiter's slot is at 4s, not 3s.
		l, err := New(1, time.Second, WithWindow(2, 3*time.Second))
		require.NoError(t, err)
		fill(t, l, 1)
		for range 2 {
			startWait(t, l, context.Background(), false)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
		defer cancel()
		assert.ErrorIs(t, l.Wait(ctx), ErrWouldExceedDeadline)

		ctx, cancel = context.WithTimeout(context.Background(), 4001*time.Millisecond)
		defer cancel()
		start := time.Now()
		require.NoError(t, l.Wait(ctx))
		assert.Equal(t, 4*time.Second, time.Since(start))
	})
}

// FuzzNew feeds New nonsense options: it returns a limiter or a
// "limiter: " error, never both and never a panic, and a limiter it
// returns admits its first call and keeps within its first rule.
func FuzzNew(f *testing.F) {
	f.Add(100, int64(time.Minute), 1500, int64(time.Hour), 10)
	f.Add(0, int64(-1), -1, int64(0), -1)
	f.Add(1, int64(1), 1<<62, int64(1<<62), 0)
	f.Fuzz(func(t *testing.T, limit int, window int64, limit2 int, window2 int64, waiters int) {
		c := NewManualClock(t0)
		l, err := New(limit, time.Duration(window), WithClock(c),
			WithWindow(limit2, time.Duration(window2)), WithMaxWaiters(waiters))
		if err != nil {
			require.Nil(t, l)
			require.True(t, strings.HasPrefix(err.Error(), "limiter: "), err.Error())
			return
		}
		require.True(t, limit > 0 && window > 0 && limit2 > 0 && window2 > 0 && waiters >= 0)
		require.True(t, l.Allow(), "the first call of a fresh limiter")
		n := 1
		for n < limit && n < 1000 && l.Allow() {
			n++
		}
		require.LessOrEqual(t, n, min(limit, limit2))
		assert.GreaterOrEqual(t, l.Remaining(), 0)
	})
}
