module github.com/apiquota/limiter/redisstore/internal/installcheck

go 1.25.0

require golang.org/x/mod v0.31.0
