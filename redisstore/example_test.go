package redisstore_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/apiquota/limiter"
	"github.com/apiquota/limiter/redisstore"
	"github.com/redis/go-redis/v9"
)

// Every process that builds this limiter shares one quota of 100 calls per
// minute and 1500 per hour for the credential "acme-prod"; an HTTP client
// sends through it. (No Output line: the example needs a Redis server.)
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()

	// While Redis is down, each process may send 10 calls a minute on its own.
	local, err := limiter.New(10, time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	l, err := redisstore.New(rdb, "acme-prod", 100, time.Minute,
		redisstore.WithWindow(1500, time.Hour),
		redisstore.WithFallback(local),
	)
	if err != nil {
		log.Fatal(err)
	}

	client := &http.Client{Transport: limiter.NewTransport(nil, l)}
	resp, err := client.Get("https://api.example.com/v1/items")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
}

// Wait blocks until every process sharing the quota may make one more call.
func ExampleLimiter_Wait() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()
	l, err := redisstore.New(rdb, "acme-prod", 100, time.Minute)
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Wait(ctx); err != nil {
		log.Fatal(err) // limiter.ErrWouldExceedDeadline: no slot within 5s
	}
	// make the call
}
