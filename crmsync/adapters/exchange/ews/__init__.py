"""The Exchange side through EWS (exchangelib): the only package where exchangelib appears.

- ``connect.connect(...)`` / ``connect.open_folder(...)``: an Account for one mailbox and its sync folder
- ``ews.EwsExchange``: the ``ExchangeSide`` port (read, find_by_crm_key, create, update, delete + batches)
- ``feed.ExchangeFeed``: SyncFolderItems pages of ids (and a pull-subscription doorbell)
- ``mapping``: canonical <-> exchangelib Contact, pure

Nothing is imported here, so importing the package loads no exchangelib and opens nothing.
"""
