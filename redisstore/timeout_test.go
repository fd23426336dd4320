package redisstore

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTimeoutFrozenRedis freezes Redis (SIGSTOP) under clients on go-redis's
// default options, whose reads wait 5s whatever the context says: every
// decision still ends at the limiter's timeout, by the failure policy, and
// the goroutines left to finish the abandoned reads end once Redis answers.
// The bounds are 10x the timeout, far below the client's 5s, so that load
// on the machine cannot break them.
func TestTimeoutFrozenRedis(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()}) // the defaults a user starts with
	t.Cleanup(func() { _ = c.Close() })
	const d = 200 * time.Millisecond
	open, err := New(c, "frozen", 5, time.Minute, WithFailurePolicy(FailOpen), WithTimeout(d))
	require.NoError(t, err)
	closed, err := New(c, "frozen", 5, time.Minute, WithTimeout(d))
	require.NoError(t, err)
	p, err := closed.Acquire(ctx) // settled while Redis is frozen
	require.NoError(t, err)
	before := runtime.NumGoroutine()

	s.Freeze()
	thawed := false
	defer func() {
		if !thawed {
			s.Thaw()
		}
	}()
	timed := func(name string, f func()) {
		t.Helper()
		start := time.Now()
		f()
		took := time.Since(start)
		t.Logf("%s with Redis frozen: %v", name, took)
		assert.Less(t, took, 10*d, name)
	}
	timed("FailOpen Allow", func() {
		ok, err := open.Allow(ctx)
		assert.NoError(t, err)
		assert.True(t, ok)
	})
	timed("FailOpen Wait", func() { assert.NoError(t, open.Wait(ctx)) })
	timed("FailClosed Allow", func() {
		ok, err := closed.Allow(ctx)
		assert.False(t, ok)
		assert.ErrorIs(t, err, errTimeout)
		assert.ErrorContains(t, err, "redisstore: redis unreachable: ")
	})
	timed("Done", p.Done)
	timed("PauseUntil", func() { closed.PauseUntil(time.Now().Add(time.Minute)) })
	timed("New", func() {
		l, err := New(c, "new", 5, time.Minute, WithTimeout(d))
		require.NoError(t, err, "New does not need Redis")
		assert.NoError(t, l.EvictionRisk(), "unknown: no evidence")
	})

	// A caller whose own deadline ends first gets its deadline, not an
	// admission: the policy answers for Redis, not for the caller.
	short, cancel := context.WithTimeout(ctx, d/4)
	defer cancel()
	ok, err := open.Allow(short)
	assert.False(t, ok)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.False(t, errors.Is(err, errTimeout))

	// The pause holds this process back by itself.
	ok, err = closed.Allow(ctx)
	assert.NoError(t, err)
	assert.False(t, ok, "paused locally")

	s.Thaw()
	thawed = true
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 },
		30*time.Second, 10*time.Millisecond, "the abandoned reads end once Redis answers")
	checkWrittenLate(t, c, closed, open, p.(*permit).seq)
}

// checkWrittenLate checks that the Done of seq and the pause that closed
// could not write are written with its next call, and reach open.
func checkWrittenLate(t *testing.T, c *redis.Client, closed, open *Limiter, seq uint64) {
	t.Helper()
	ctx := context.Background()
	n, err := closed.Remaining(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "paused")
	n, err = open.Remaining(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "the pause written late reaches every process")
	assert.Greater(t, c.PTTL(ctx, closed.keys[1]).Val(), 30*time.Second)
	score, err := c.ZScore(ctx, closed.keys[0], idOf(seq)).Result()
	require.NoError(t, err)
	assert.Positive(t, score, "the Done is written: the entry is no longer in flight")
}

// TestWithTimeoutError checks the option's validation.
func TestWithTimeoutError(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = c.Close() })
	for _, d := range []time.Duration{0, -time.Second} {
		l, err := New(c, "k", 1, time.Second, WithTimeout(d))
		assert.Nil(t, l)
		assert.EqualError(t, err, "redisstore: timeout must be positive, got "+d.String())
	}
}
