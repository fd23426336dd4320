package limiter

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fired reports the time a timer fired with, or false if it has not.
func fired(tm Timer) (time.Time, bool) {
	select {
	case at := <-tm.C():
		return at, true
	default:
		return time.Time{}, false
	}
}

func TestManualClockAdvanceFiresInOrder(t *testing.T) {
	c := NewManualClock(t0)
	late := c.NewTimer(3 * time.Second)
	early := c.NewTimer(time.Second)
	alsoEarly := c.NewTimer(time.Second)
	assert.Equal(t, 3, c.Waiters())

	c.Advance(time.Second - time.Nanosecond)
	_, ok := fired(early)
	assert.False(t, ok, "not due yet")

	c.Advance(time.Nanosecond)
	at, ok := fired(early)
	require.True(t, ok)
	assert.Equal(t, t0.Add(time.Second), at, "fires with its own instant")
	_, ok = fired(alsoEarly)
	assert.True(t, ok)
	assert.Equal(t, 1, c.Waiters())

	c.Advance(time.Hour)
	at, ok = fired(late)
	require.True(t, ok)
	assert.Equal(t, t0.Add(3*time.Second), at, "an Advance past a timer fires it at its instant")
	assert.Equal(t, t0.Add(time.Hour+time.Second), c.Now())
	assert.Equal(t, 0, c.Waiters())
}

func TestManualClockStop(t *testing.T) {
	c := NewManualClock(t0)
	tm := c.NewTimer(time.Second)
	assert.True(t, tm.Stop())
	assert.False(t, tm.Stop(), "second Stop")
	assert.Equal(t, 0, c.Waiters())
	c.Advance(time.Minute)
	_, ok := fired(tm)
	assert.False(t, ok, "a stopped timer never fires")

	tm = c.NewTimer(time.Second)
	c.Advance(time.Second)
	assert.False(t, tm.Stop(), "Stop after firing")
}

func TestManualClockImmediateTimer(t *testing.T) {
	c := NewManualClock(t0)
	for _, d := range []time.Duration{0, -time.Second} {
		tm := c.NewTimer(d)
		at, ok := fired(tm)
		require.True(t, ok, "d=%v fires at once", d)
		assert.Equal(t, t0, at)
	}
	assert.Equal(t, 0, c.Waiters())
}

func TestManualClockSetBackwards(t *testing.T) {
	c := NewManualClock(t0)
	tm := c.NewTimer(time.Minute)
	c.Set(t0.Add(-time.Hour))
	assert.Equal(t, t0.Add(-time.Hour), c.Now())
	c.Advance(time.Hour + time.Minute - time.Nanosecond)
	_, ok := fired(tm)
	assert.False(t, ok, "the timer waits for its instant, not for a duration")
	c.Set(t0.Add(time.Minute))
	_, ok = fired(tm)
	assert.True(t, ok)
	c.Advance(-time.Hour)
	assert.Equal(t, t0.Add(time.Minute), c.Now(), "a negative Advance does nothing")
}

func TestManualClockBlockUntil(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := NewManualClock(t0)
		done := make(chan error, 1)
		go func() { done <- c.BlockUntil(context.Background(), 2) }()
		c.NewTimer(time.Second)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("BlockUntil returned with 1 waiter")
		default:
		}
		c.NewTimer(time.Second)
		require.NoError(t, <-done)

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		assert.ErrorIs(t, c.BlockUntil(ctx, 3), context.Canceled)
		assert.NoError(t, c.BlockUntil(ctx, 2), "already satisfied")
	})
}

func TestSystemClockInSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(3, time.Second)
		require.NoError(t, err)
		start := time.Now()
		fill(t, l, 3)
		require.NoError(t, l.Wait(context.Background()))
		assert.Equal(t, time.Second, time.Since(start), "admitted the instant the first call left")
		tm := SystemClock().NewTimer(time.Minute)
		at := <-tm.C()
		assert.Equal(t, start.Add(time.Second+time.Minute), at)
		assert.False(t, tm.Stop())
	})
}

func TestManualClockZeroValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fresh ManualClock
		assert.Equal(t, 1, func() int { fresh.NewTimer(time.Second); return fresh.Waiters() }())

		var c ManualClock
		assert.True(t, c.Now().IsZero())
		done := make(chan error, 1)
		go func() { done <- c.BlockUntil(context.Background(), 1) }()
		synctest.Wait()
		tm := c.NewTimer(time.Second)
		require.NoError(t, <-done)
		c.Advance(time.Second)
		_, ok := fired(tm)
		assert.True(t, ok)
	})
}
