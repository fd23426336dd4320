package limiter

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type statsOf Stats

func (s statsOf) Stats() Stats { return Stats(s) }

// A throttle whose server names a wait of 1 s, after 5 calls accepted in
// the last second, teaches 5 per second; quiet for ten seconds, it admits
// one more; once the configured rule implies it, it is dropped.
func TestFitWindow(t *testing.T) {
	c := NewManualClock(t0)
	ln := &learner{}
	ln.configure(statsOf{Limit: 100, Window: time.Minute})
	for range 5 {
		ln.accepted(t0, t0, 1, c)
	}
	require.True(t, ln.fitWindow(t0.Add(time.Millisecond), t0, time.Second, c))
	require.NotNil(t, ln.win.l)
	assert.Equal(t, 5, ln.win.n)
	assert.Equal(t, 5, ln.win.l.Remaining())
	assert.True(t, ln.fitWindow(t0.Add(2*time.Millisecond), t0, time.Second, c), "an older call teaches nothing new")
	assert.Equal(t, 5, ln.win.n)

	ln.relaxWindow(t0.Add(10*time.Second), c)
	assert.Equal(t, 5, ln.win.n, "not quiet for ten windows yet")
	ln.relaxWindow(t0.Add(10*time.Second+time.Millisecond), c)
	assert.Equal(t, 6, ln.win.n, "one more after ten quiet windows")

	ln.setWindow(t0, 100, time.Second, c)
	assert.Nil(t, ln.win.l, "100 per second: the configured 100 per minute implies it")

	assert.False(t, ln.fitWindow(t0, t0, 40*time.Second, c), "a wait of most of the configured window: the pacing learns")
}
