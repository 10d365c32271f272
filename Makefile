# The two commands a new user needs (see README.md):
#   make run    set up, then run the main job on the embedded default (file log): the gsm8k
#               recipe in real formats (HF checkpoint + tokenizer, veRL parquet, math reward)
#   make test   set up, start the local Kafka broker, run the test suite
.PHONY: setup run demo test lint kafka-start kafka-stop bench

setup:
	scripts/setup.sh

run: setup
	.venv/bin/python -m recipes.gsm8k.prepare runs/gsm8k
	.venv/bin/streamrl run recipes/gsm8k/recipe.toml

demo: setup
	.venv/bin/streamrl demo

test:
	scripts/test.sh

lint: setup
	.venv/bin/ruff check .

kafka-start:
	scripts/kafka.sh install && scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

bench: setup kafka-start
	.venv/bin/python -m bench.log_throughput
