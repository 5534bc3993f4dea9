"""The official openai Python client, unmodified, against the router's HTTP endpoint.

Usage: openai_client.py BASE_URL KEY. Prints what it saw as one JSON object; the Rust test
(tests/tests/router.rs) checks it. The stand-in provider behind the router answers the first
four provider calls and breaks the fifth stream after its first tokens.
"""

import json
import sys

import openai


def main() -> None:
    base_url, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    seen = {}

    seen["models"] = sorted(model.id for model in client.models.list().data)

    reply = client.chat.completions.create(model="default", messages=messages)
    seen["content"] = reply.choices[0].message.content
    seen["usage"] = [reply.usage.prompt_tokens, reply.usage.completion_tokens]

    raw = client.chat.completions.with_raw_response.create(model="default", messages=messages)
    seen["provider_header"] = raw.headers.get("x-synos-provider")

    stream = client.chat.completions.create(model="default", messages=messages, stream=True)
    seen["streamed"] = "".join(
        chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
    )

    # The client asks for base64 unless told otherwise, and decodes it itself.
    embeddings = client.embeddings.create(model="embed", input=["a", "bb"])
    seen["embedding"] = list(embeddings.data[1].embedding)

    try:
        broken = client.chat.completions.create(model="default", messages=messages, stream=True)
        seen["broken_stream"] = "".join(
            chunk.choices[0].delta.content or "" for chunk in broken if chunk.choices
        )
    except openai.APIError as error:
        seen["broken_stream_error"] = str(error.message)

    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-synos-wrong", max_retries=0)
    try:
        wrong.models.list()
        seen["wrong_key"] = "accepted"
    except openai.AuthenticationError as error:
        seen["wrong_key"] = error.status_code

    try:
        client.chat.completions.create(model="no-such-route", messages=messages)
    except openai.NotFoundError as error:
        seen["unknown_route"] = error.status_code

    print(json.dumps(seen))


if __name__ == "__main__":
    main()
