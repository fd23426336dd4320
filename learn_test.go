package limiter

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A response that says 3 calls remain before a reset 10 s away: 3 more go,
// the fourth waits for the reset and then goes alone, as a probe.
func TestLearnBudget(t *testing.T) {
	tr, f, l, c := newTestTransport(t, t0, 100, time.Minute, func(n int, _ *http.Request) (*http.Response, error) {
		if n == 0 {
			return respond(200, "X-RateLimit-Remaining", "3", "X-RateLimit-Reset", "10"), nil
		}
		return respond(200), nil
	})
	ctx := context.Background()
	for i := range 4 {
		_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
		require.NoError(t, err, "call %d", i)
	}
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1, "the fifth waits for the reset")
	assert.Len(t, f.callsSeen(), 4)
	assert.True(t, l.Stats().PausedUntil.IsZero(), "the limiter itself is not paused")
	c.Advance(10*time.Second - time.Nanosecond)
	requirePending(t, ch)
	c.Advance(time.Nanosecond)
	require.NoError(t, recv(t, ch).err)
	assert.Len(t, f.callsSeen(), 5)
}

// Calls in flight when the count arrives were not counted by the server
// yet: they come off the budget.
func TestLearnBudgetCountsCallsInFlight(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan int, 4)
	tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, func(n int, _ *http.Request) (*http.Response, error) {
		arrived <- n
		if n == 0 {
			<-release // in flight while the second call's answer comes
			return respond(200), nil
		}
		return respond(200, "RateLimit", `"default";r=1;t=10`), nil
	})
	ctx := context.Background()
	first := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	require.Equal(t, 0, recv(t, arrived))
	_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	require.NoError(t, err)
	third := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1, "r=1, but one call is still in flight: none may start")
	close(release)
	require.NoError(t, recv(t, first).err)
	requirePending(t, third)
	c.Advance(10 * time.Second)
	require.NoError(t, recv(t, third).err)
	assert.Len(t, f.callsSeen(), 3)
}

// After a reset the server's state is unknown: one call goes, and the
// others wait for its answer, which tells them how many may follow.
func TestLearnProbeAfterReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(100, time.Minute)
		require.NoError(t, err)
		var mu sync.Mutex
		sent := 0
		release := make(chan struct{})
		tr := NewTransport(roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			mu.Lock()
			sent++
			n := sent
			mu.Unlock()
			if n == 2 {
				<-release // the probe, held at the server
			}
			left := "0"
			if n >= 2 {
				left = "50"
			}
			return respond(200, "X-RateLimit-Remaining", left, "X-RateLimit-Reset", "5"), nil
		}), l)
		get := func() error {
			_, err := tr.RoundTrip(newGet(t, context.Background(), "https://api.github.com/"))
			return err
		}
		require.NoError(t, get(), "the quota is spent until +5s")
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { assert.NoError(t, get()) })
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		mu.Lock()
		assert.Equal(t, 2, sent, "after the reset, only the probe is out")
		mu.Unlock()
		close(release)
		wg.Wait()
		assert.Equal(t, 4, sent, "its answer lets the others go")
	})
}

// A RateLimit-Policy stricter than the rules becomes a rule; one the rules
// already imply changes nothing.
func TestLearnPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		calls  int // that go at once
	}{
		{`"burst";q=2;w=10, "day";q=10000;w=86400`, 2},
		{`"loose";q=200;w=60`, 5},
	} {
		tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(200, "RateLimit-Policy", tc.policy)))
		ctx := context.Background()
		for range tc.calls {
			_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
			require.NoError(t, err)
		}
		if tc.calls == 5 {
			assert.Nil(t, tr.single.learn.policy, tc.policy)
			continue
		}
		ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
		blockUntil(t, c, 1, tc.policy)
		assert.Len(t, f.callsSeen(), 2)
		c.Advance(10 * time.Second)
		require.NoError(t, recv(t, ch).err)
	}
}

// With learning off, a count of calls left is not a budget; a spent quota
// still pauses.
func TestLearnDisabled(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200, "X-RateLimit-Remaining", "1", "X-RateLimit-Reset", "10")))
	tr.DisableLearning = true
	for range 4 {
		_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
		require.NoError(t, err)
	}
	assert.Len(t, f.callsSeen(), 4)
}

func TestQuotaLeft(t *testing.T) {
	unix := strconv.FormatInt(t0.Add(30*time.Second).Unix(), 10)
	for _, tc := range []struct {
		name  string
		kv    []string
		left  int64
		reset time.Duration
		ok    bool
	}{
		{"none", nil, 0, 0, false},
		{"structured", []string{"RateLimit", `"default";r=7;t=20`}, 7, 20 * time.Second, true},
		{"structured, fewest wins", []string{"RateLimit", `"a";r=7;t=20, "b";r=3;t=50`}, 3, 50 * time.Second, true},
		{"dictionary", []string{"RateLimit", `limit=100, remaining=9, reset=4`}, 9, 4 * time.Second, true},
		{"older draft", []string{"RateLimit-Remaining", "12", "RateLimit-Reset", "6"}, 12, 6 * time.Second, true},
		{"X- Unix", []string{"X-RateLimit-Remaining", "4999", "X-RateLimit-Reset", unix}, 4999, 30 * time.Second, true},
		{"no reset", []string{"X-RateLimit-Remaining", "5"}, 0, 0, false},
		{"garbage", []string{"X-RateLimit-Remaining", "-5", "X-RateLimit-Reset", "10"}, 0, 0, false},
	} {
		left, reset, ok := quotaLeft(mkHeader(tc.kv...), t0)
		assert.Equal(t, tc.ok, ok, tc.name)
		assert.Equal(t, tc.left, left, tc.name)
		assert.Equal(t, tc.reset, reset, tc.name)
	}
}

// fitLearner returns a learner that remembers calls accepted at the
// offsets from t0.
func fitLearner(offsets ...time.Duration) *learner {
	ln := &learner{}
	ln.configure(cfg10)
	for _, d := range offsets {
		ln.accepted(t0.Add(d), t0.Add(d), 1, nil)
	}
	return ln
}

// cfg10 is a connection's limiter of 10 per second.
type cfg10Stats struct{}

func (cfg10Stats) Stats() Stats { return Stats{Limit: 10, Window: time.Second} }

var cfg10 statser = cfg10Stats{}

// A leaky bucket like nginx's burst=5 accepts 6 at once and refuses the
// 7th: the fitted pacing is that bucket, at the configured pace.
func TestTightenFitsABucket(t *testing.T) {
	c := NewManualClock(t0)
	ln := fitLearner(0, 0, 0, 0, 0, 0)
	ln.tighten(t0.Add(time.Millisecond), t0, c)
	assert.Equal(t, 6, ln.burst)
	assert.Equal(t, 100*time.Millisecond, ln.every)
	assert.Equal(t, 7, ln.ceiling)
	require.NotNil(t, ln.pace)
	assert.Equal(t, 6, ln.pace.Remaining())

	// A second throttle from the same burst teaches nothing new.
	ln.tighten(t0.Add(2*time.Millisecond), t0, c)
	assert.Equal(t, 6, ln.burst)

	// Relaxing: not past the refused burst within ten quiet windows...
	ln.relaxStep(t0.Add(5*time.Second), c)
	assert.Equal(t, 6, ln.burst)
	// ... then one step, and back at the rules the pacing is dropped.
	ln.relaxStep(t0.Add(11*time.Second), c)
	assert.Equal(t, 7, ln.burst)
	ln.relaxStep(t0.Add(12*time.Second), c)
	assert.Equal(t, 7, ln.burst, "each step past it takes ten quiet windows")
	for i := range 3 {
		ln.relaxStep(t0.Add(time.Duration(21+10*i)*time.Second), c)
	}
	assert.Nil(t, ln.pace, "never looser than the configured rules")
}

// Refused with the bucket empty (a sliding counter still weighing the
// previous window): the pace slows; answers that come after the refusal
// for calls sent before it grow the fitted burst and restore the pace.
func TestTightenSlowsWhenRefusedEmpty(t *testing.T) {
	c := NewManualClock(t0)
	ln := fitLearner(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	ln.tighten(t0.Add(time.Second), t0.Add(time.Second), c)
	assert.Equal(t, 1, ln.burst)
	assert.Equal(t, 125*time.Millisecond, ln.every)

	ln = fitLearner()
	ln.tighten(t0.Add(time.Millisecond), t0, c)
	assert.Equal(t, 125*time.Millisecond, ln.every, "nothing accepted yet")
	for range 6 {
		ln.accepted(t0.Add(time.Millisecond), t0, 1, c)
	}
	assert.Equal(t, 6, ln.burst, "six were accepted before the refusal")
	assert.Equal(t, 100*time.Millisecond, ln.every)
	ln.accepted(t0.Add(time.Second), t0.Add(time.Second), 1, c)
	assert.Equal(t, 6, ln.burst, "a later call does not grow it")
}

// Throttled while pacing: the burst halves, and at 1 the pace slows.
func TestTightenWhilePacing(t *testing.T) {
	c := NewManualClock(t0)
	ln := fitLearner(0, 0, 0, 0, 0, 0, 0, 0)
	ln.tighten(t0.Add(time.Millisecond), t0, c)
	require.Equal(t, 8, ln.burst)
	ln.fitting = false
	at := t0.Add(time.Second)
	for range 8 {
		ln.accepted(at, at, 1, c)
	}
	ln.tighten(at, at, c)
	assert.Equal(t, 4, ln.burst, "halved")
	assert.Equal(t, 1, ln.quietMul)
	assert.Equal(t, 8, ln.ceiling, "the refused burst is remembered")
	ln.burst = 1
	ln.fitting = false
	at = at.Add(time.Second)
	ln.accepted(at, at, 1, c)
	ln.tighten(at, at, c)
	assert.Equal(t, 1, ln.burst)
	assert.Equal(t, 125*time.Millisecond, ln.every)
}

// A group Transport's state per key follows the keys in use: each call
// checks a few and drops the idle ones.
func TestGroupTransportDropsIdleKeys(t *testing.T) {
	c := NewManualClock(t0)
	g, err := NewGroup(1000, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(200, "X-RateLimit-Remaining", "900", "X-RateLimit-Reset", "60"))}
	tr := NewGroupTransport(f, g, func(r *http.Request) string { return r.Header.Get("X-Tenant") })
	require.NoError(t, tr.Route("/v1/", 500, time.Minute))
	send := func(key string) {
		req := newGet(t, context.Background(), "https://api.example.com/v1/x")
		req.Header.Set("X-Tenant", key)
		_, err := syncRoundTrip(t, tr, req)
		require.NoError(t, err)
	}
	const keys = 300
	for i := range keys {
		send("k" + strconv.Itoa(i))
	}
	assert.Equal(t, keys, tr.conns.len(), "each key holds a budget and a route slot")
	c.Advance(time.Minute - time.Nanosecond)
	for range 10 {
		send("busy")
	}
	assert.Greater(t, tr.conns.len(), keys-5, "nothing is idle yet: nothing dropped")
	c.Advance(time.Nanosecond)
	for range keys {
		send("busy")
	}
	assert.LessOrEqual(t, tr.conns.len(), 2, "the idle keys are gone")
}

// A relax step past the refused burst that earns a refusal doubles the
// quiet time before the next try.
func TestRelaxTryBacksOff(t *testing.T) {
	c := NewManualClock(t0)
	ln := fitLearner(0, 0, 0, 0, 0, 0)
	ln.tighten(t0.Add(time.Millisecond), t0, c)
	require.Equal(t, 6, ln.burst)
	at := t0.Add(11 * time.Second)
	ln.relaxStep(at, c)
	require.Equal(t, 7, ln.burst, "the try")
	at = at.Add(500 * time.Millisecond)
	for range 7 {
		ln.accepted(at, at, 1, c)
	}
	ln.tighten(at, at, c)
	assert.Equal(t, 2, ln.quietMul)
	assert.Less(t, ln.burst, 7)
	ln.fitting = false
	for i := 1; i <= 19; i++ {
		ln.relaxStep(at.Add(time.Duration(i)*time.Second), c)
	}
	assert.Equal(t, 6, ln.burst, "back up to below the refused burst, and no further for twenty windows")
	ln.relaxStep(at.Add(20*time.Second), c)
	assert.Equal(t, 7, ln.burst)
}

// While pacing, a budget that the calls spend before the reset slows the
// pace, at most once a window; a budget that a refusal set does not.
func TestBudgetSpentSlowsThePace(t *testing.T) {
	c := NewManualClock(t0)
	ln := fitLearner(0, 0)
	ln.tighten(t0.Add(time.Millisecond), t0, c)
	require.Equal(t, 100*time.Millisecond, ln.every)
	h := mkHeader("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "1")
	hk := kindsOf(h)
	hk.readQuota(h, t0)
	ln.observe(&hk, t0, true, false, ln.seq, 0, time.Minute, c)
	ln.budgetSpent(t0, c)
	assert.Equal(t, 100*time.Millisecond, ln.every, "a refusal's count")
	ln.observe(&hk, t0, false, false, ln.seq, 0, time.Minute, c)
	ln.budgetSpent(t0, c)
	assert.Equal(t, 100*time.Millisecond, ln.every, "within a window of the throttle")
	at := t0.Add(time.Second + time.Millisecond) // a window after the throttle
	ln.budgetSpent(at, c)
	assert.Equal(t, 125*time.Millisecond, ln.every)
	ln.budgetSpent(at.Add(time.Second-1), c)
	assert.Equal(t, 125*time.Millisecond, ln.every, "at most once a window")
	ln.budgetSpent(at.Add(time.Second), c)
	assert.Equal(t, 156250*time.Microsecond, ln.every)
}

// A budget that resets after the context's deadline fails at once, with
// an error that says timeout.
func TestLearnBudgetPastDeadline(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200, "X-RateLimit-Remaining", "1", "X-RateLimit-Reset", "60"), answer(200)))
	for range 2 {
		_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	assert.ErrorIs(t, err, ErrWouldExceedDeadline)
	assert.True(t, isTimeout(err))
	assert.Len(t, f.callsSeen(), 2)
}
