"""The simulated Campaign, by use case, over one set of tables (`CampaignTables`):
- `admin`: recipients and lists (imports, deletes, kept versions, restores, retention, pages);
- `loads`: audience loads of the export files in the Data Landing Zone (audience and profile sync);
- `deliveries`: simulated sending to a list, with its logs;
- `feedback`: the delivery logs sent back to the platform as experience events."""

from __future__ import annotations

from shared.campaign.admin import CampaignAdmin
from shared.campaign.feedback import FeedbackExport
from shared.campaign.loads import AudienceLoads
from shared.campaign.sending import Deliveries
from shared.campaign.tables import CampaignTables
from shared.settings import Settings
from shared.storage import StorageAccount


class Campaign:
    def __init__(self, tables: CampaignTables) -> None:
        self.tables = tables
        self.admin = CampaignAdmin(tables)
        self.loads = AudienceLoads(tables)
        self.deliveries = Deliveries(tables)
        self.feedback = FeedbackExport(tables)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> Campaign:
        return cls(CampaignTables.from_settings(settings, account))
