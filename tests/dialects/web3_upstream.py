"""web3.py, an Ethereum client library, on rpchub's /ws/rpc in front of an HTTP-only node: it reads
the block number, a balance and the chain id through the upstream node (single calls and a
batch), and on the same socket subscribes to an rpchub channel and receives a publication.

web3.py 7 sends any request with `w3.socket.make_request`, but it takes only `eth_subscription`
notifications for subscriptions (it rejects any other message without an id), so the provider
below is web3.py's WebSocketProvider with one override: `socket_recv` hands rpchub's
notifications (method `subscription`) to a queue of their own, and everything else to web3.py.
It runs with web3.py's defaults otherwise: its requests go out as binary frames, which rpchub takes
as text when they are UTF-8 JSON.

Usage: web3_upstream.py WS_URL ADDRESS CHANNEL. Prints {"ready": true, ...} once subscribed, then
waits for one publication and prints what it read as one JSON line.
"""

import asyncio
import json
import sys

from web3 import AsyncWeb3, WebSocketProvider


class RpchubProvider(WebSocketProvider):
    """web3.py's WebSocket provider, with rpchub's notifications kept apart."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notifications: asyncio.Queue = asyncio.Queue()

    async def socket_recv(self):
        while True:
            message = await super().socket_recv()
            if isinstance(message, dict) and message.get("method") == "subscription":
                self.notifications.put_nowait(message["params"])
                continue
            return message


async def main(url: str, address: str, channel: str) -> None:
    provider = RpchubProvider(url)
    async with AsyncWeb3(provider) as w3:
        address = AsyncWeb3.to_checksum_address(address)
        block = await w3.eth.block_number
        balance = await w3.eth.get_balance(address)
        chain = await w3.eth.chain_id
        async with w3.batch_requests() as batch:
            batch.add(w3.eth.get_block_number())
            batch.add(w3.eth.get_balance(address))
            batched = await batch.async_execute()

        answer = await w3.socket.make_request("subscribe", {"channel": channel})
        sub = answer["result"]
        snapshot = await asyncio.wait_for(provider.notifications.get(), 10)
        print(json.dumps({"ready": True, "subscription": sub}), flush=True)
        publication = await asyncio.wait_for(provider.notifications.get(), 30)
        # The socket still serves calls after the notifications.
        after = await w3.eth.block_number
        print(
            json.dumps(
                {
                    "block": block,
                    "balance": balance,
                    "chain": chain,
                    "batched": list(batched),
                    "subscription": sub,
                    "snapshot": snapshot,
                    "publication": publication,
                    "after": after,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
